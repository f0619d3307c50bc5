"""The qep-jax command line end to end in a temporary directory (small problem, in-process main)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import qep_jax
from qep_jax import _cli, _interrupt, load_run

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
        (["run", "--memory-budget", "1KiB"], "--memory-budget >="),
        (["run", "--chunk-size", "0"], "must be >= 1"),
        (["run", "--config", "missing.toml"], "not found"),
        (["run", "--output", "no/such/dir/x.h5"], "does not exist"),
        (["run", "--bogus"], "unrecognized arguments"),
        # The figure path is checked before the run (it failed after it, or replaced the output).
        (["run", "--output", "res.png"], "would replace the run file"),
        (["run", "--output", "a.h5", "--figure", "./a.h5"], "is the --output file"),
        (["run", "--figure", "f2.xyz"], "unknown figure format .xyz"),
        (["run", "--figure", "fig"], "no extension"),
        (["run", "--figure", "nodir/f.png"], "does not exist"),
        # Times must be the increasing, non-negative grid the summary and xarray assume.
        (["run", "--times", "10,0,5"], "not strictly increasing (10 then 0)"),
        (["run", "--times", "0,0,10"], "not strictly increasing (0 then 0)"),
        (["run", "--times=-1,0"], "times must be >= 0"),
        (["run", "--seed", "99999999999999999999"], "seed < 2**63"),  # was an OverflowError traceback
        # Memory refusals name the flags.
        (["run", "--realizations", "100000000", "--keep-realizations"], "--keep-realizations holds 100000000"),
        (["run", "--realizations", "100000", "--chunk-size", "100000", "--memory-budget", "64MiB"], "--chunk-size <="),
        (["run", "--n-levels", "100000000"], "--n-levels <="),
        (["run", "--n-times", "100000000000"], "the time grid alone needs"),  # was a MemoryError traceback
        # Equal in float32: the file's time axis had duplicates.
        (["run", "--precision", "float32", "--times", "0,1,1.00000001"], "are the same number in float32"),
        # A trailing separator: the parts went into newdir/.parts and the final rename failed after the run.
        (["run", "--output", "newdir/"], "is a directory"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_values_give_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(argv, capsys)
    assert code != 0
    assert fragment in err and err.startswith("qep-jax: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    if argv[0] == "run" and "--config" not in argv and "--output" not in argv[-2:-1]:
        assert code == 2 and os.listdir(tmp_path) == []  # refused before anything was written


def test_huge_n_levels_is_refused_quickly(tmp_path, monkeypatch, capsys):
    # The largest fitting N was searched by scanning every N: 26 s for 2e7, > 100 s for 1e8.
    # Counted, not timed: bisection needs ~log2(N) memory estimates.
    from qep_jax import _ensemble

    monkeypatch.chdir(tmp_path)
    estimate, calls = _ensemble._realization_bytes, []
    monkeypatch.setattr(_ensemble, "_realization_bytes", lambda *a: calls.append(a) or estimate(*a))
    code, _, err = _main(["run", "--n-levels", "100000000"], capsys)
    assert code == 2 and "--memory-budget >=" in err and 0 < len(calls) < 100


def test_run_help_describes_every_flag(capsys):
    from qep_jax._ensemble import DEFAULT_QUANTITIES, QUANTITIES

    with pytest.raises(SystemExit):
        _cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "(default None)" not in text
    for flag in ("--overwrite", "--quiet", "--keep-realizations", "--no-figure"):
        assert f"{flag} " in text and not any(f"{flag} {other}" in text for other in ("--overwrite", "--quiet",
                                                                                      "--keep-realizations",
                                                                                      "--no-figure"))
    assert f"default: {', '.join(DEFAULT_QUANTITIES)};" in text
    assert all(q in text for q in QUANTITIES)


def test_suptitle_clears_the_panel_titles_with_all_quantities():
    import matplotlib.pyplot as plt

    from qep_jax._ensemble import QUANTITIES, EnsembleResult

    t = np.linspace(0, 10, 5)
    shape = {q: (5, 1) if spec.per_reservoir else (5,) for q, spec in QUANTITIES.items()}
    result = EnsembleResult(t, dict(n_levels=6, delta=0.1, coupling_strength=0.1, beta=10.0, n_realizations=3),
                            {q: np.zeros(sh) for q, sh in shape.items()}, {}, {q: np.ones(sh) for q, sh in shape.items()})
    fig = _cli._draw_figure(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lowest = fig._suptitle.get_window_extent(renderer).y0
    highest = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes if ax.get_visible())
    plt.close(fig)
    assert lowest >= highest


def test_config_errors_name_the_config_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, text, fragment in (
        ("beta", "beta = -1\n", "beta = -1: -1 must be > 0"),  # was reported as '--beta -1.0'
        ("levels", "n_levels = 1\n", "n_levels = 1:"),
        ("times", "times = [0, 0, 10]\n", "times = [0, 0, 10]: "),
        ("output", "output = true\n", "output = True: True is true/false"),  # wrote a file 'True'
        ("figure", "figure = true\n", "figure = True:"),
        ("quantities", "quantities = [1]\n", "quantities = [1]: [1] must list quantity names as strings"),
    ):
        (tmp_path / f"{name}.toml").write_text(text)
        code, _, err = _main(["run", "--config", f"{name}.toml"], capsys)
        assert code == 2 and fragment in err and "config" in err and "--" not in err.split(":", 2)[2], err
    assert not (tmp_path / "True").exists()


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
    assert code == 130 and "2 of 5 realizations are kept in qep_run.h5.parts; rerun the same command" in err
    assert os.path.exists("qep_run.h5.parts/manifest.json")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 0 and "resuming: 2 of 5" in err and "2 resumed" in out
    assert not os.path.exists("qep_run.h5.parts")


def test_interrupt_messages_say_what_was_kept(tmp_path, monkeypatch, capsys):
    # Ctrl-C promised kept chunks when none existed, and outside the run printed a traceback.
    monkeypatch.chdir(tmp_path)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(_cli, "_check_memory", ctrl_c)  # model setup
        code, _, err = _main(["run", *SMALL], capsys)
    assert code == 130 and "before the run started; nothing was written" in err
    with monkeypatch.context() as m:
        m.setattr(_cli, "_Progress", lambda enabled: ctrl_c)  # called before the first chunk
        code, _, err = _main(["run", *SMALL], capsys)
    assert code == 130 and "before the first chunk finished; nothing was kept" in err
    assert os.listdir(tmp_path) == []
    with monkeypatch.context() as m:
        m.setattr(_cli, "_figure", ctrl_c)
        code, _, err = _main(["run", *SMALL], capsys)
    assert code == 130 and "qep_run.h5 was written (it is complete)" in err and "Traceback" not in err
    code, out, _ = _main(["run", *SMALL], capsys)
    assert code == 0 and "already holds this run" in out and os.path.exists("qep_run.png")


def test_overwrite_interrupted_keeps_old_output_and_resumes(tmp_path, monkeypatch, capsys):
    # --overwrite deleted the old output first, then 'rerun the same command to resume' deleted the
    # kept chunks as well.
    monkeypatch.chdir(tmp_path)
    assert _main(["run", *SMALL, "--no-figure", "--quiet"], capsys)[0] == 0

    def stop(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    new = [*SMALL[:-6], "--seed", "8", *SMALL[-4:], "--no-figure", "--overwrite"]
    with monkeypatch.context() as m:
        m.setattr(_cli, "_Progress", lambda enabled: stop)
        code, _, err = _main(["run", *new], capsys)
    assert code == 130 and "2 of 5 realizations are kept" in err
    assert load_run("qep_run.h5").parameters["seed"] == 7
    code, out, err = _main(["run", *new], capsys)
    assert code == 0 and "2 resumed" in out and load_run("qep_run.h5").parameters["seed"] == 8
    # An interrupted --overwrite of the same run, then a plain rerun: its parts are redundant and go.
    with monkeypatch.context() as m:
        m.setattr(_cli, "_Progress", lambda enabled: stop)
        assert _main(["run", *new], capsys)[0] == 130
    assert os.path.isdir("qep_run.h5.parts")
    code, out, err = _main(["run", *new[:-1]], capsys)
    assert code == 0 and "already holds this run" in out and "removed qep_run.h5.parts" in err
    assert not os.path.exists("qep_run.h5.parts")


class _DropsCtrlC:
    """Ctrl-C while a ``__del__`` runs, as it happened inside jax's gc callback in CI: Python drops
    the KeyboardInterrupt raised there and prints "Exception ignored in ..." (the run went on)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_python_drops_is_sent_again(capsys):
    with pytest.raises(KeyboardInterrupt):
        with _interrupt.remember_ctrl_c() as ctrl_c:
            _DropsCtrlC()
            assert ctrl_c.pressed
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the re-sent SIGINT lands in this loop
                time.sleep(0.01)
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_or_foreign_sigint_handler_is_left_alone():
    # A job started in the background by a script inherits SIGINT ignored; it must stay ignored.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _interrupt.remember_ctrl_c():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    with _interrupt.remember_ctrl_c() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is ctrl_c
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_dropped_twice_stops_the_run_after_the_chunk(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def bar(done, total):
        if done >= 2:
            _DropsCtrlC()

    with monkeypatch.context() as m:
        m.setattr(_interrupt.CtrlC, "unraisable", lambda self, default, hook_args: None)  # no re-send
        m.setattr(_cli, "_Progress", lambda enabled: bar)
        code, _, err = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 130 and "2 of 5 realizations are kept" in err, err
    code, out, _ = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 0 and "2 resumed" in out


def test_ctrl_c_in_a_real_process_exits_130(tmp_path):
    """SIGINT to ``python -m qep_jax run`` while the first chunk compiles (the crash case: exit -11
    in 5 of 7 tries, with a message about kept chunks that did not exist), and after a chunk."""
    code = textwrap.dedent("""
        import os, signal, threading
        from qep_jax import _cli, _ensemble
        first = _ensemble._chunk_function
        def chunk_function(*args):
            # SIGINT 0.2 s after the chunk function is built: inside its XLA compilation.
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            return first(*args)
        _ensemble._chunk_function = chunk_function
        _cli.entry_point()
    """)
    args = ["run", "--n-levels", "16", "--realizations", "4", "--n-times", "8", "--no-figure",
            "--quantities", "entropy_production,mutual_information"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Normally still compiling: nothing kept; on a fast machine a first chunk may have finished.
    assert "nothing was kept" in proc.stderr or "realizations are kept" in proc.stderr, proc.stderr[-2000:]


def test_progress_bar_only_on_terminal(capsys, monkeypatch):
    bar = _cli._Progress(enabled=True)
    bar(0, 4)
    bar(4, 4)
    assert "4/4 realizations" in capsys.readouterr().err
    # The rate starts after the first chunk, which includes the compilation (10 s here).
    clock = iter([0.0, 10.0, 11.0])
    monkeypatch.setattr(_cli.time, "perf_counter", lambda: next(clock))
    bar = _cli._Progress(enabled=True)
    for done in (0, 2, 4):
        bar(done, 6)
    assert "4/6 realizations   2.00/s  ETA     1 s" in capsys.readouterr().err
    quiet = _cli._Progress(enabled=False)
    quiet(4, 4)
    assert capsys.readouterr().err == ""


def test_one_realization_and_repeated_quantities(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _cli._quantities("heat,heat,entropy_production") == ["heat", "entropy_production"]
    code, out, _ = _main(["run", *SMALL[:6], "--realizations", "1", "--quantities", "heat,heat", "--no-figure"], capsys)
    assert code == 0 and "one realization has no standard error: nan" in out and out.count("heat[r=0]") == 1


def test_figure_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    """A format matplotlib lists but cannot write here (.pgf without LaTeX) is refused before the run; a
    figure that fails after the run says the run is saved, without a traceback."""
    monkeypatch.chdir(tmp_path)
    from matplotlib.figure import Figure

    save = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if kwargs.get("format") == "pgf" or str(fname).endswith(".pgf"):
            raise RuntimeError("'xelatex' not found")
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    code, _, err = _main(["run", *SMALL, "--figure", "f.pgf"], capsys)
    assert code == 2 and "cannot write .pgf here ('xelatex' not found)" in err and os.listdir(tmp_path) == []

    def broken(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_cli, "_figure", broken)
    code, _, err = _main(["run", *SMALL], capsys)
    assert code == 1 and "could not be written" in err and "run is complete in qep_run.h5" in err
    assert "Traceback" not in err and load_run("qep_run.h5").parameters["n_realizations"] == 5


def test_info_and_module_entry_point(tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OPENBLAS_CORETYPE="Haswell")
    proc = subprocess.run([sys.executable, "-m", "qep_jax", "info"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "jax 0." in proc.stdout and "devices" in proc.stdout and "linear algebra" in proc.stdout
    # The kernels OpenBLAS runs, and a forced choice, are named (they changed eigh times by 1.4x).
    assert "BLAS loaded: " in proc.stdout and "OPENBLAS_CORETYPE=Haswell is set" in proc.stdout
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
    # info showed the pinned variables as if the user had set them.
    assert proc.stdout.startswith("True [1]\n") and "none set by you; qep-jax pinned OPENBLAS_NUM_THREADS=1" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(base, OPENBLAS_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("False [") and "BLAS threads set by you: OPENBLAS_NUM_THREADS=2;" in proc.stdout
    assert "batched eigh/eigvalsh: NumPy's" in proc.stdout and "host callbacks" in proc.stdout
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


def test_figure_and_no_figure(tmp_path, monkeypatch, capsys):
    """Both from one source contradict each other (--figure used to be ignored silently); a flag
    overrides the config file's choice either way."""
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(["run", *SMALL, "--figure", "f.png", "--no-figure"], capsys)
    assert code == 2 and "--figure and --no-figure contradict" in err
    (tmp_path / "both.toml").write_text('figure = "f.png"\nno_figure = true\n')
    code, _, err = _main(["run", "--config", "both.toml", *SMALL], capsys)
    assert code == 2 and "config keys figure and no_figure contradict" in err
    (tmp_path / "fig.toml").write_text('figure = "f.png"\n')
    assert _main(["run", "--config", "fig.toml", *SMALL, "--no-figure", "--quiet"], capsys)[0] == 0
    assert not (tmp_path / "f.png").exists()
    (tmp_path / "nofig.toml").write_text("no_figure = true\n")
    assert _main(["run", "--config", "nofig.toml", *SMALL, "--figure", "g.png", "--quiet"], capsys)[0] == 0
    assert (tmp_path / "g.png").stat().st_size > 10_000


def test_negative_value_needs_equals_sign(tmp_path, monkeypatch, capsys):
    """argparse takes -1e-3 for a flag; the message says how to pass it, and the joined form runs."""
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(["run", *SMALL, "--coupling", "-1e-3", "--no-figure"], capsys)
    assert code == 2 and "--coupling=VALUE" in err, err
    code, _, err = _main(["run", *SMALL, "--coupling=-1e-3", "--no-figure", "--quiet"], capsys)
    assert code == 0, err
    assert load_run("qep_run.h5").parameters["coupling_strength"] == -1e-3


def test_memory_errors_name_the_config_key(tmp_path, monkeypatch, capsys):
    """A value from the config file is named by its key in the memory messages, a flag by the flag."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.toml").write_text('chunk_size = 100000\nmemory_budget = "64MiB"\nn_levels = 200\n')
    code, _, err = _main(["run", "--config", "big.toml", "--realizations", "100000"], capsys)
    assert code == 2 and "config chunk_size 100000 needs" in err and "config memory_budget" in err, err
    assert "--chunk-size" not in err
    code, _, err = _main(["run", "--config", "big.toml", "--realizations", "100000", "--chunk-size", "100000"], capsys)
    assert code == 2 and "--chunk-size 100000 needs" in err and "config memory_budget" in err, err
    (tmp_path / "grid.toml").write_text('n_times = 100000000\nmemory_budget = "64MiB"\n')
    code, _, err = _main(["run", "--config", "grid.toml"], capsys)
    assert code == 2 and "config n_times 100000000: the time grid alone" in err and "--" not in err, err


@pytest.mark.parametrize("argv", [["info"], ["run", "--help"]])
def test_closed_stdout_is_not_an_error(argv):
    """'qep-jax info | head -1' printed 'qep-jax: error: Broken pipe ...' and exited 1."""
    proc = subprocess.Popen([sys.executable, "-m", "qep_jax", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    proc.stdout.close()  # before the child writes: it is still importing
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "error" not in err.lower(), err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        _cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"qep-jax {qep_jax.__version__}"


def test_a_non_finite_realization_is_one_line_and_keeps_finished_chunks(tmp_path, monkeypatch, capsys,
                                                                       poison_gather):
    monkeypatch.chdir(tmp_path)
    real = poison_gather(4, (0, 1), np.inf)  # the 4th gather: the first quantity of chunk [2, 4)
    code, out, err = _main(["run", *SMALL, "--no-figure"], capsys)
    assert code == 1 and err.count("\n") == 1 and "realization(s) [2]" in err and "finished chunks are kept" in err
    assert not os.path.exists("qep_run.h5")
    monkeypatch.setattr(qep_jax._ensemble, "_gather", real)
    code, out, err = _main(["run", *SMALL, "--no-figure"], capsys)  # resumes from the kept chunk
    assert code == 0 and "2 resumed" in out, err
