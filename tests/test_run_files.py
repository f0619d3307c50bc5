"""Run files under interruption: kill -9 and Ctrl-C at the edges of a run (the final clean-up, the
manifest write, the output rename, the imports) and two runs writing one output at once."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qep_jax import _cli, _io, load_run

ARGS = ["run", "--n-levels", "6", "--times", "0,5,20", "--realizations", "5", "--seed", "7",
        "--quantities", "entropy_production,heat", "--chunk-size", "2", "--no-figure"]
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def _main(argv, capsys):
    code = _cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _child(tmp_path, code, args, timeout=180):
    """Run ``code`` (with ``sys.argv[1:] = args``) in a fresh Python, in the foreground."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=ENV)


# SIGKILL right after shutil.rmtree has unlinked manifest.json (patched in the child only).
_KILL_IN_RMTREE = """
    import os, shutil, signal, sys
    from qep_jax import _cli
    real_rmtree, real_unlink = shutil.rmtree, os.unlink
    def unlink(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if os.path.basename(path) == "manifest.json":
            os.kill(os.getpid(), signal.SIGKILL)
    def rmtree(path, *args, **kwargs):
        os.unlink = unlink
        try:
            return real_rmtree(path, *args, **kwargs)
        finally:
            os.unlink = real_unlink
    shutil.rmtree = rmtree
    sys.exit(_cli.main(sys.argv[1:]))
"""


def test_kill_during_the_final_clean_up_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    # rmtree deleted manifest.json first; the parts directory without it stayed forever, every
    # rerun saying "already holds this run".
    proc = _child(tmp_path, _KILL_IN_RMTREE, [*ARGS, "--quiet"])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_run(str(tmp_path / "qep_run.h5")).n_realizations == 5  # written before the clean-up
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(ARGS, capsys)
    assert code == 0 and "already holds this run" in out, err
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"], err


def test_a_parts_directory_without_manifest_next_to_the_finished_output_is_removed(tmp_path, monkeypatch,
                                                                                   capsys):
    # What the killed clean-up of older versions left: chunk files only. Nothing in it can be resumed.
    monkeypatch.chdir(tmp_path)
    assert _main([*ARGS, "--quiet"], capsys)[0] == 0
    os.mkdir("qep_run.h5.parts")
    (tmp_path / "qep_run.h5.parts" / "chunk-000000002-000000004.npz").write_bytes(b"x" * 100)
    (tmp_path / "qep_run.h5.parts" / ".tmp-1-abcdefghmanifest.json").write_bytes(b"{")
    code, out, err = _main(ARGS, capsys)
    assert code == 0 and "already holds this run" in out and "removed qep_run.h5.parts" in err
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"]
    # A manifest-less directory holding anything else is not the run's: it stays.
    os.mkdir("qep_run.h5.parts")
    (tmp_path / "qep_run.h5.parts" / "notes.txt").write_text("mine")
    assert _main(ARGS, capsys)[0] == 0
    assert (tmp_path / "qep_run.h5.parts" / "notes.txt").exists()


def test_trash_of_a_live_process_is_left_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _main([*ARGS, "--quiet"], capsys)[0] == 0
    mine = f"qep_run.h5.parts.trash-{os.getpid()}-0123abcd"  # this process: an earlier clean-up
    live = f"qep_run.h5.parts.trash-{os.getppid()}-0123abcd"  # another live process
    other_output = "other.h5.parts.trash-999999999-0123abcd"
    for name in (mine, live, other_output):
        os.makedirs(os.path.join(name, "x"))
    code, _, err = _main(ARGS, capsys)
    assert code == 0 and f"removed {mine}, left by an interrupted clean-up" in err
    assert sorted(os.listdir(tmp_path)) == sorted([live, other_output, "qep_run.h5"])
