"""The qep-jax command line end to end in a temporary directory (small problem, in-process main)."""

import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from qep_jax import _cli, load_run

SMALL = ["--n-levels", "6", "--t-max", "30", "--n-times", "4", "--realizations", "5", "--seed", "7",
         "--quantities", "entropy_production,heat,spin_polarization", "--chunk-size", "2"]


def _main(argv, capsys):
    code = _cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_small_run_writes_file_figure_and_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["run", *SMALL], capsys)
    assert code == 0, err
    assert "entropy_production" in out and "+-" in out and "runtime" in out and "cpu" in out
    assert (tmp_path / "qep_run.h5").exists() and (tmp_path / "qep_run.png").stat().st_size > 10_000
    res = load_run("qep_run.h5")
    assert res.parameters["n_levels"] == 6 and res.parameters["seed"] == 7
    np.testing.assert_allclose(res.times, np.linspace(0, 30, 4))
    # Same command again: nothing recomputed, summary says so.
    code, out, _ = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 0 and "already holds this run" in out
    # Other parameters against the existing output: one-line error; --overwrite replaces.
    code, out, err = _main(["run", *SMALL[:-4], "--seed", "8", "--chunk-size", "2", "--quiet"], capsys)
    assert code != 0 and err.count("\n") == 1 and "--overwrite" in err and "seed 7 -> 8" in err
    code, out, err = _main(["run", *SMALL, "--seed", "8", "--overwrite", "--quiet", "--no-figure"], capsys)
    assert code == 0 and out == "" and err == ""
    assert load_run("qep_run.h5").parameters["seed"] == 8


def test_default_run_at_small_size(tmp_path, monkeypatch, capsys):
    # The no-argument path with the defaults shrunk (the real defaults take about a minute).
    monkeypatch.chdir(tmp_path)
    for k, v in dict(n_levels=6, t_max=30.0, n_times=4, realizations=5, seed=7, chunk_size=2,
                     quantities=["entropy_production", "heat", "spin_polarization"]).items():
        monkeypatch.setitem(_cli.DEFAULTS, k, v)
    code, out, err = _main(["run"], capsys)
    assert code == 0, err
    assert "final values at t = 30" in out
    assert os.path.exists("qep_run.h5") and os.path.exists("qep_run.png")


def test_config_file_and_flag_override(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(
        'n-levels = 6\ntimes = [0.0, 10.0, 20.0, 30.0]\nrealizations = 5\nseed = 3\nchunk_size = 2\n'
        'quantities = ["entropy_production", "heat", "spin_polarization"]\noutput = "cfg.h5"\n'
        'keep_realizations = true\nno_figure = true\n'
    )
    code, out, err = _main(["run", "--config", "run.toml", "--seed", "7", "--quiet"], capsys)
    assert code == 0, err
    res = load_run("cfg.h5")
    assert res.parameters["seed"] == 7  # flag beats file
    assert res.series["heat"].shape == (5, 4, 1)  # keep_realizations from the file
    assert not os.path.exists("cfg.png")
    with h5py.File("cfg.h5") as f:
        assert f["entropy_production"].dims[0][0].name == "/realization"


def test_float32_and_explicit_figure_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["run", *SMALL, "--precision", "float32", "--memory-budget", "64MiB",
                            "--output", "f32.h5", "--figure", "fig.png"], capsys)
    assert code == 0, err
    assert "float32 loses accuracy" in err and os.path.exists("fig.png")
    res = load_run("f32.h5")
    assert res.parameters["precision"] == "float32"
    code, _, _ = _main(["run", *SMALL, "--output", "f64.h5", "--quiet", "--no-figure"], capsys)
    f64 = load_run("f64.h5")
    # Same GOE matrices in both precisions; float32 eigenvectors of a 12 x 12 H are good to ~1e-5.
    np.testing.assert_allclose(res.mean["spin_polarization"], f64.mean["spin_polarization"], atol=1e-4)
    np.testing.assert_allclose(res.mean["heat"], f64.mean["heat"], atol=1e-5)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", "--n-levels", "x"], "not an integer"),
        (["run", "--n-levels", "1"], "N >= 2"),
        (["run", "--realizations", "0"], "must be >= 1"),
        (["run", "--beta", "-1"], "must be > 0"),
        (["run", "--delta", "nan"], "must be finite"),
        (["run", "--t-max", "0"], "must be > 0"),
        (["run", "--times", "0,a"], "comma-separated"),
        (["run", "--seed", "-3"], "must be >= 0"),
        (["run", "--quantities", "entropy"], "unknown quantity"),
        (["run", "--precision", "float16"], "invalid choice"),
        (["run", "--memory-budget", "lots"], "2GiB"),
        (["run", "--memory-budget", "1KiB"], "memory_budget >="),
        (["run", "--chunk-size", "0"], "must be >= 1"),
        (["run", "--config", "missing.toml"], "not found"),
        (["run", "--output", "no/such/dir/x.h5"], "does not exist"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_values_give_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(argv, capsys)
    assert code != 0
    assert fragment in err and err.startswith("qep-jax: error:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_config_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.toml").write_text("n_levles = 5\n")
    (tmp_path / "b.toml").write_text("n_levels = [\n")
    (tmp_path / "c.toml").write_text("beta = 'hot'\n")
    (tmp_path / "d.toml").write_text("realizations = 5.5\n")
    (tmp_path / "e.toml").write_text("quiet = 1\n")
    for name, fragment in (("a", "unknown key 'n_levles'"), ("b", "not valid TOML"), ("c", "not a number"),
                           ("d", "not an integer"), ("e", "true or false")):
        code, _, err = _main(["run", "--config", f"{name}.toml"], capsys)
        assert code == 2 and fragment in err and err.count("\n") == 1


def test_interrupt_keeps_chunks_and_says_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = []

    def stop(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_Progress", lambda enabled: stop)
    code, out, err = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 130 and "rerun the same command to resume" in err
    assert os.path.exists("qep_run.h5.parts/manifest.json")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 0 and "resuming: 2 of 5" in err and "2 resumed" in out
    assert not os.path.exists("qep_run.h5.parts")


def test_progress_bar_only_on_terminal(capsys):
    bar = _cli._Progress(enabled=True)
    bar(0, 4)
    bar(4, 4)
    assert "4/4 realizations" in capsys.readouterr().err
    quiet = _cli._Progress(enabled=False)
    quiet(4, 4)
    assert capsys.readouterr().err == ""


def test_info_and_module_entry_point(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "qep_jax", "info"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "jax 0." in proc.stdout and "devices" in proc.stdout and "linear algebra" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "qep_jax", "run", "--n-levels", "1"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_entry_point_pins_blas_unless_the_user_chose(tmp_path):
    """``qep-jax`` runs LAPACK single-threaded (qep_jax spreads batches over the cores itself)
    unless a thread count is already set, and then leaves it alone."""
    code = textwrap.dedent("""
        import sys, threadpoolctl
        import qep_jax  # NumPy's BLAS is loaded before the entry point runs, as in the script
        from qep_jax import _cli
        pinned = _cli.pin_blas_threads()
        threads = sorted({i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"})
        print(pinned, threads)
        sys.exit(_cli.main(["info"]))
    """)
    base = {k: v for k, v in os.environ.items() if k not in _cli._THREAD_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("True [1]\n") and "OPENBLAS_NUM_THREADS=1" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(base, OPENBLAS_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False [") and "OPENBLAS_NUM_THREADS=2;" in proc.stdout
    assert "split over 1 host thread(s)" in proc.stdout


def test_resume_after_kill_9_gives_identical_file(tmp_path, monkeypatch, capsys):
    import json
    import time

    import h5py

    monkeypatch.chdir(tmp_path)
    args = ["run", "--n-levels", "16", "--t-max", "30", "--n-times", "64", "--realizations", "40", "--seed", "5",
            "--quantities", "entropy_production,mutual_information", "--chunk-size", "1", "--no-figure",
            "--quiet"]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "qep_jax", *args, "--output", "killed.h5"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "killed.h5.parts" / "manifest.json"
    deadline = time.monotonic() + 120
    n_parts = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists():
                n_parts = len(json.loads(manifest.read_text())["parts"])
                if n_parts >= 1:
                    break
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
    assert 1 <= n_parts < 40, "the run finished before it could be killed; make it longer"
    assert not (tmp_path / "killed.h5").exists()
    code, out, err = _main([*args, "--output", "killed.h5"], capsys)
    assert code == 0, err
    code, _, err = _main([*args, "--output", "clean.h5"], capsys)
    assert code == 0, err
    with h5py.File("killed.h5") as a, h5py.File("clean.h5") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()])
        assert a.attrs["parameters_hash"] == b.attrs["parameters_hash"]
