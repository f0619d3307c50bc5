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


@pytest.mark.parametrize("locked", [True, False])
def test_trash_of_a_live_process_is_left_alone_unless_the_output_is_locked(locked, tmp_path, monkeypatch, capsys):
    """Without the output's lock another live process may still be deleting its trash; with it
    (every run of this output holds it while it deletes) every trash is stale: one whose pid is
    alive (pid 1, a reused pid) stayed forever."""
    monkeypatch.chdir(tmp_path)
    if not locked:
        monkeypatch.setattr(_io, "fcntl", None)
    assert _main([*ARGS, "--quiet"], capsys)[0] == 0
    mine = f"qep_run.h5.parts.trash-{os.getpid()}-0123abcd"  # this process: an earlier clean-up
    live = f"qep_run.h5.parts.trash-{os.getppid()}-0123abcd"  # another live process
    other_output = "other.h5.parts.trash-999999999-0123abcd"
    for name in (mine, live, other_output):
        os.makedirs(os.path.join(name, "x"))
    dead = "qep_run.h5.parts.trash-999999999-0123abcd"
    os.makedirs(os.path.join(dead, "x"))
    code, _, err = _main(ARGS, capsys)
    assert code == 0 and f"removed {dead}, left by an interrupted clean-up" in err and mine not in err
    kept = [other_output, "qep_run.h5"] + ([] if locked else [live])
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


@pytest.mark.parametrize("after_rename", [False, True])
def test_ctrl_c_inside_a_manifest_write_reports_what_the_manifest_lists(after_rename, tmp_path, monkeypatch,
                                                                        capsys):
    # The chunk was counted as kept before its manifest entry was written: "4 of 5 kept" while the
    # manifest listed 2 realizations.
    monkeypatch.chdir(tmp_path)
    real = _io._atomic_write
    writes = []

    def atomic_write(path, data):
        if os.path.basename(path) == "manifest.json":
            writes.append(path)
            if len(writes) == 2:
                if after_rename:
                    real(path, data)
                raise KeyboardInterrupt
        real(path, data)

    with monkeypatch.context() as m:
        m.setattr(_io, "_atomic_write", atomic_write)
        code, _, err = _main(ARGS, capsys)
    listed = json.loads((tmp_path / "qep_run.h5.parts" / "manifest.json").read_text())["parts"]
    kept = sum(e["stop"] - e["start"] for e in listed.values())
    assert kept == (4 if after_rename else 2)
    assert code == 130 and f"{kept} of 5 realizations are kept in qep_run.h5.parts" in err, err
    code, out, err = _main(ARGS, capsys)
    assert code == 0 and f"resuming: {kept} of 5" in err


def _raise_once(real, when=lambda *args: True):
    calls = []

    def wrapper(*args, **kwargs):
        if not calls and when(*args):
            calls.append(args)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper


def _interrupt_points(tmp_path):
    output = str(tmp_path / "qep_run.h5")

    real_rmtree = _io.shutil.rmtree
    calls = []

    def rmtree_one_file_then_ctrl_c(path, *args, **kwargs):
        if calls or ".trash-" not in str(path):
            return real_rmtree(path, *args, **kwargs)
        calls.append(path)
        os.remove(os.path.join(path, "manifest.json"))
        raise KeyboardInterrupt

    return {
        # In write_run, after the rename: the fsync of the output's directory.
        "output renamed": ("_fsync_dir", _raise_once(_io._fsync_dir, lambda d: os.path.exists(output)
                                                     and os.path.samefile(d, tmp_path))),
        "before the clean-up": ("PartStore.remove", _raise_once(_io.PartStore.remove)),
        "inside the clean-up": ("shutil.rmtree", rmtree_one_file_then_ctrl_c),
    }


@pytest.mark.parametrize("point", ["output renamed", "before the clean-up", "inside the clean-up"])
def test_ctrl_c_once_the_output_is_written_says_it_is_complete(point, tmp_path, monkeypatch, capsys):
    # Exit 130 with "5 of 5 realizations are kept in qep_run.h5.parts; rerun to resume" although
    # qep_run.h5 was complete and the parts about to be deleted (or already gone).
    monkeypatch.chdir(tmp_path)
    target, replacement = _interrupt_points(tmp_path)[point]
    with monkeypatch.context() as m:
        if target == "shutil.rmtree":
            m.setattr(_io.shutil, "rmtree", replacement)
        elif target == "PartStore.remove":
            m.setattr(_io.PartStore, "remove", lambda self: replacement(self))
        else:
            m.setattr(_io, target, replacement)
        code, _, err = _main(ARGS, capsys)
    assert code == 130 and "qep_run.h5 was written (it is complete); rerun the same command for the summary" \
        in err, err
    assert "kept in" not in err
    # The clean-up was finished after the press.
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"]
    assert load_run("qep_run.h5").n_realizations == 5
    code, out, err = _main(ARGS, capsys)
    assert code == 0 and "already holds this run" in out


def test_run_to_file_says_the_output_is_complete(tmp_path, monkeypatch):
    import qep_jax

    model = qep_jax.SpinGORM(6, 0.1, 0.1, 10.0)
    output = str(tmp_path / "lib.h5")
    monkeypatch.setattr(_io.PartStore, "remove", lambda self, real=_io.PartStore.remove: (
        real(self), (_ for _ in ()).throw(KeyboardInterrupt))[0])
    with pytest.raises(_io.RunInterrupted) as info:
        qep_jax.run_to_file(model, [0.0, 5.0], 3, output, chunk_size=1)
    err = info.value
    assert err.output_written and err.kept_realizations == err.n_realizations == 3 and err.output == output
    assert "was complete" in str(err)
    monkeypatch.undo()
    res, already = qep_jax.run_to_file(model, [0.0, 5.0], 3, output, chunk_size=1)
    assert already and res.n_realizations == 3
    assert sorted(os.listdir(tmp_path)) == ["lib.h5"]


# A real SIGINT (the process signals itself) once the output is in place, through the entry point.
_SIGINT_AT = """
    import os, shutil, signal, sys
    from qep_jax import _cli, _io
    point = sys.argv.pop(1)
    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)
    if point == "output":
        real_write = _io.write_run
        def write_run(path, result):
            real_write(path, result)
            ctrl_c()
        _io.write_run = write_run
    else:
        real_rmtree = shutil.rmtree
        def rmtree(path, *args, **kwargs):
            if ".trash-" in path and not hasattr(rmtree, "done"):
                rmtree.done = True
                os.remove(os.path.join(path, "manifest.json"))
                ctrl_c()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree
    sys.argv[0] = "qep-jax"
    _cli.entry_point()
"""


@pytest.mark.parametrize("point", ["output", "rmtree"])
def test_real_sigint_once_the_output_is_written(point, tmp_path):
    proc = _child(tmp_path, _SIGINT_AT, [point, *ARGS])
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "qep_run.h5 was written (it is complete)" in proc.stderr and "kept in" not in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"]
    assert load_run(str(tmp_path / "qep_run.h5")).n_realizations == 5


def test_a_second_run_on_the_same_output_is_refused(tmp_path, monkeypatch, capsys):
    # Two runs with different seeds on one output both succeeded; the later rename silently
    # replaced the other's file without --overwrite. Here the second starts (in this process, on
    # its own open file) while the first is about to compute its first chunk.
    monkeypatch.chdir(tmp_path)
    inner = []

    def progress(done, total):
        if not inner:
            for argv in ([*ARGS, "--seed", "8"], ARGS, [*ARGS, "--seed", "8", "--overwrite"]):
                inner.append(_cli.main([*argv, "--quiet"]))
            inner.append(capsys.readouterr().err)
            assert os.path.exists("qep_run.h5.lock")

    with monkeypatch.context() as m:
        m.setattr(_cli, "_Progress", lambda enabled: progress)
        code, _, err = _main(ARGS, capsys)
    assert code == 0, err
    assert inner[:3] == [1, 1, 1], inner
    assert inner[3].count(f"qep-jax: error: qep_run.h5 is being written by another qep-jax run (process "
                          f"{os.getpid()} on ") == 3, inner[3]
    assert load_run("qep_run.h5").parameters["seed"] == 7
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"]  # the lock file is removed at the end
    # A lock file a killed run left does not block the next one.
    (tmp_path / "qep_run.h5.lock").write_text("12345 elsewhere\n")
    code, out, err = _main([*ARGS, "--seed", "8", "--overwrite"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"] and load_run("qep_run.h5").parameters["seed"] == 8


_WAITS_AFTER_A_CHUNK = """
    import os, sys, time
    from qep_jax import _cli
    def progress(done, total):
        if done:
            open("waiting", "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists("go") and time.monotonic() < deadline:
                time.sleep(0.01)
    _cli._Progress = lambda enabled: progress
    sys.exit(_cli.main(sys.argv[1:]))
"""


def test_concurrent_processes_with_other_settings(tmp_path):
    """Two real processes on one output, the second (with --overwrite, which the check of the parts
    lets through) started while the first waits after its first chunk: it is refused with exit 1,
    and the output holds the first run's settings."""
    import time

    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WAITS_AFTER_A_CHUNK), *ARGS, "--quiet"],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "waiting").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read()
        second = _child(tmp_path, "import sys; from qep_jax import _cli; sys.exit(_cli.main(sys.argv[1:]))",
                        [*ARGS, "--quiet", "--seed", "8", "--overwrite"])
    finally:
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 1 and "qep_run.h5 is being written by another qep-jax run" in second.stderr, \
        second.stderr
    assert load_run(str(tmp_path / "qep_run.h5")).parameters["seed"] == 7
    assert sorted(os.listdir(tmp_path)) == ["go", "qep_run.h5", "waiting"]


def test_without_fcntl_runs_unlocked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_io, "fcntl", None)
    seen = []
    monkeypatch.setattr(_cli, "_Progress", lambda enabled: lambda done, total: seen.append(
        os.path.exists("qep_run.h5.lock")))
    code, _, err = _main(ARGS, capsys)
    assert code == 0, err
    assert seen and not any(seen) and sorted(os.listdir(tmp_path)) == ["qep_run.h5"]


# Ctrl-C in a gc callback while qep_jax's imports run, as in jax's _xla_gc_callback: Python drops
# the KeyboardInterrupt ("Exception ignored in ...").
_CTRL_C_DROPPED_DURING_IMPORT = """
    import gc, signal, sys
    def callback(phase, info):
        if "qep_jax._driven" in sys.modules and "qep_jax.protocols" not in sys.modules \\
                and not hasattr(callback, "done"):
            callback.done = True
            signal.raise_signal(signal.SIGINT)
    gc.callbacks.append(callback)
    try:
        from qep_jax._cli import entry_point
    finally:
        gc.callbacks.remove(callback)
        print("pressed" if hasattr(callback, "done") else "not pressed", flush=True)
    sys.argv[0] = "qep-jax"
    entry_point()
"""


def test_a_ctrl_c_python_drops_while_qep_jax_is_imported_stops_the_run(tmp_path):
    # The press was lost: the run finished and exited 0.
    proc = _child(tmp_path, _CTRL_C_DROPPED_DURING_IMPORT, [*ARGS, "--quiet"])
    assert proc.stdout == "pressed\n"
    assert proc.returncode == -signal.SIGINT, proc.stderr[-2000:]  # Python's own KeyboardInterrupt exit
    assert proc.stderr.rstrip().endswith("KeyboardInterrupt") and "Exception ignored" not in proc.stderr
    assert os.listdir(tmp_path) == []


def test_importing_qep_jax_keeps_the_unraisable_hook(tmp_path):
    code = """
        import sys
        hook = sys.unraisablehook
        import qep_jax
        assert sys.unraisablehook is hook and not hasattr(qep_jax, "_reraise_dropped_ctrl_c")
        import jax
        assert not jax.config.jax_enable_x64
        class Raises:
            def __del__(self):
                raise ValueError("not a Ctrl-C")
        Raises()
    """
    proc = _child(tmp_path, code, [])
    assert proc.returncode == 0 and "Exception ignored" in proc.stderr and "not a Ctrl-C" in proc.stderr, \
        proc.stderr


def test_dropped_ctrl_c_context_passes_other_exceptions_on(monkeypatch):
    from qep_jax import _interrupt

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    with pytest.raises(KeyboardInterrupt):
        with _interrupt.reraise_dropped_ctrl_c():
            Raises(KeyboardInterrupt())
            Raises(ValueError("other"))
    assert [a.exc_type for a in seen] == [ValueError] and sys.unraisablehook == seen.append
    with _interrupt.reraise_dropped_ctrl_c():  # nothing dropped: nothing raised
        Raises(ValueError("again"))
    assert len(seen) == 2


# A press Python drops before the run's own handling starts (here: while the entry point pins the
# BLAS threads) is sent again by the handler the entry point installs first.
_CTRL_C_DROPPED_IN_ENTRY_POINT = """
    import signal, sys
    from qep_jax import _cli
    class Drops:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)
    real_pin = _cli.pin_blas_threads
    def pin():
        Drops()
        return real_pin()
    _cli.pin_blas_threads = pin
    sys.argv[0] = "qep-jax"
    _cli.entry_point()
"""


def test_a_ctrl_c_python_drops_in_the_entry_point_stops_the_run(tmp_path):
    proc = _child(tmp_path, _CTRL_C_DROPPED_IN_ENTRY_POINT, [*ARGS, "--quiet"])
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted before" in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_the_summary_says_the_output_is_complete(tmp_path, monkeypatch, capsys):
    # It said "interrupted before the run started; nothing was written".
    monkeypatch.chdir(tmp_path)

    def summary(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_summary", summary)
    code, _, err = _main(ARGS, capsys)
    assert code == 130 and "qep_run.h5 was written (it is complete)" in err, err
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5"]


def test_ctrl_c_next_to_a_finished_output_keeps_parts_of_other_settings(tmp_path, monkeypatch, capsys):
    # Ctrl-C while a rerun of a finished run looks at the parts directory: the output is complete,
    # but the parts there (an interrupted --overwrite with other settings) are not this run's to delete.
    monkeypatch.chdir(tmp_path)
    assert _main([*ARGS, "--quiet"], capsys)[0] == 0

    def stop(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    other = [*ARGS, "--seed", "8", "--overwrite"]
    with monkeypatch.context() as m:
        m.setattr(_cli, "_Progress", lambda enabled: stop)
        assert _main(other, capsys)[0] == 130
    with monkeypatch.context() as m:
        m.setattr(_io.PartStore, "read_manifest", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        code, _, err = _main(ARGS, capsys)
    assert code == 130 and "qep_run.h5 was written (it is complete)" in err, err
    assert sorted(os.listdir(tmp_path)) == ["qep_run.h5", "qep_run.h5.parts"]
    code, out, err = _main(other, capsys)
    assert code == 0 and "resuming: 2 of 5" in err and load_run("qep_run.h5").parameters["seed"] == 8


def test_another_users_lock_file_still_locks(tmp_path, monkeypatch):
    """A lock file this user may not open for writing (another user's, mode 0644) made the run skip
    locking silently, and two runs wrote one output. flock works on a read-only descriptor."""
    path = str(tmp_path / "out.h5")
    first = _io.OutputLock(path)
    first.acquire()
    assert first.locked
    real_open = os.open

    def no_write_access(p, flags, *args):
        if p == path + ".lock" and flags & (os.O_RDWR | os.O_WRONLY) and not flags & os.O_EXCL:
            raise PermissionError(13, "Permission denied", p)
        return real_open(p, flags, *args)

    monkeypatch.setattr(_io.os, "open", no_write_access)
    with pytest.raises(_io.OutputError, match="being written by another qep-jax run"):
        _io.OutputLock(path).acquire()
    first.release()


def test_lock_path_symlink_is_not_followed(tmp_path):
    """A symlink at <output>.lock had its target truncated and overwritten with the pid."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / "out.h5.lock")
    notes = []
    lock = _io.OutputLock(str(tmp_path / "out.h5"), notes.append)
    lock.acquire()
    lock.release()
    assert victim.read_text() == "keep me" and notes and "cannot lock" in notes[0]


def test_file_system_without_flock_leaves_no_lock_file(tmp_path, monkeypatch):
    import errno

    def refuse(fd, op):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(_io.fcntl, "flock", refuse)
    notes = []
    lock = _io.OutputLock(str(tmp_path / "out.h5"), notes.append)
    lock.acquire()
    lock.release()
    assert notes and "cannot lock" in notes[0] and os.listdir(tmp_path) == []


def test_long_output_name_is_cleaned_up(tmp_path, monkeypatch, capsys):
    """<output>.parts.trash-<pid>-<tag> exceeded NAME_MAX for basenames near 230 characters: the
    written run then failed with 'File name too long' at every rerun and kept its parts."""
    monkeypatch.chdir(tmp_path)
    name = "r" * 227 + ".h5"
    args = [*ARGS, "--output", name, "--quiet"]
    assert _main(args, capsys)[0] == 0
    assert os.listdir(tmp_path) == [name]
    assert _main(args, capsys)[0] == 0 and os.listdir(tmp_path) == [name]


def test_ctrl_c_after_the_summary_is_not_an_interruption(tmp_path, monkeypatch, capsys):
    """A press after the run printed its summary (before the process ignores SIGINT) said
    'interrupted before the run started; nothing was written.' and exited 130."""
    monkeypatch.chdir(tmp_path)
    real_run = _cli._run

    def run_then_press(args):
        code = real_run(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_run", run_then_press)
    code, out, err = _main(ARGS, capsys)
    assert code == 0 and "interrupted" not in err and "entropy_production" in out
