"""The ``qep-jax`` command line: ``qep-jax run`` (spin-GORM ensemble to a file) and ``qep-jax info``.

Only the public API and the runner/IO modules are used. Every user error ends as one line on
stderr with a fix and a non-zero exit code; tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import time
import tomllib
import warnings

from ._interrupt import remember_ctrl_c

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Defaults: a real ensemble in about 10 s on 2 CPU cores (see docs/cli.md).
DEFAULTS = {
    "n_levels": 100,
    "delta": 0.1,
    "coupling": 0.1,
    "beta": 10.0,
    "t_max": 200.0,
    "n_times": 101,
    "times": None,
    "realizations": 96,
    "seed": 0,
    "quantities": None,  # the runner's DEFAULT_QUANTITIES
    "precision": "float64",
    "chunk_size": None,
    "memory_budget": "2GiB",
    "output": "qep_run.h5",
    "overwrite": False,
    "quiet": False,
    "keep_realizations": False,
    "no_figure": False,
    "figure": None,
}


class UsageError(Exception):
    """A bad flag or value; the message is the one line shown to the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        missing = re.fullmatch(r"argument (\S+): expected one argument", message)
        if missing:  # argparse reads a value such as -1e-3 as a flag and reports the value missing
            flag = missing.group(1).split("/")[-1]
            message += f" (give it a value; one that starts with '-' must be joined to the flag by '=': {flag}=VALUE)"
        raise UsageError(f"{message}; see '{self.prog} --help'.")


def _int(text) -> int:
    # Config files give typed values: refuse 5.5 and true instead of truncating them.
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _levels(text):
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is too small; use N >= 2")
    return value


def _seed(text):
    from ._ensemble import SEED_LIMIT

    value = _nonnegative_int(text)
    if value >= SEED_LIMIT:  # jax.random.key overflowed (OverflowError traceback)
        raise argparse.ArgumentTypeError(f"{text!r} is too large; use 0 <= seed < 2**63 = {SEED_LIMIT}")
    return value


def _nonnegative_int(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _finite_float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite")
    return value


def _positive_float(text):
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _path(text):
    # A config file may give `output = true`: str(True) wrote a file named 'True'.
    if not isinstance(text, str) or not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file name; write it in quotes, e.g. \"run.h5\"")
    return text


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(text) -> int:
    """``'2GiB'``, ``'500MB'``, ``'1e9'`` or an int -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 2GiB, 500MB or 1000000")
    try:
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 2GiB, 500MB or 1000000") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size")
    return int(value)


def _times(text):
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0,10,20") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite numbers separated by commas, e.g. 0,10,20")
    # The summary reports the last time as the final one and xarray's .sel needs unique times.
    if values[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r} starts below 0; times must be >= 0 (t = 0 is the initial state)")
    bad = next((i for i in range(1, len(values)) if values[i] <= values[i - 1]), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(f"{text!r} is not strictly increasing ({values[bad - 1]:g} then "
                                         f"{values[bad]:g}); list each time once, in increasing order")
    return values


def _quantities(text):
    from ._ensemble import QUANTITIES

    if isinstance(text, list) and not all(isinstance(q, str) for q in text):
        raise argparse.ArgumentTypeError(f"{text!r} must list quantity names as strings, e.g. [\"heat\", \"entropy_production\"]")
    names = [q.strip() for q in (text if isinstance(text, list) else str(text).split(",")) if q.strip()]
    bad = [q for q in names if q not in QUANTITIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown quantity {bad[0] if bad else '(none)'!r}; choose from {','.join(QUANTITIES)}")
    return list(dict.fromkeys(names))  # a repeated name is one quantity (the memory check counted it twice)


def _quantities_help() -> str:
    from ._ensemble import DEFAULT_QUANTITIES, QUANTITIES

    # ", " lets argparse wrap the list between names instead of inside them.
    return (f"comma-separated quantities to average; default: {', '.join(DEFAULT_QUANTITIES)}; "
            f"all: {', '.join(QUANTITIES)} (meanings in docs/cli.md)")


# name -> (converter, help); flags are --name-with-dashes, config keys name_with_underscores.
OPTIONS = {
    "n_levels": (_levels, "reservoir levels N (>= 2)"),
    "delta": (_finite_float, "spin splitting Delta"),
    "coupling": (_finite_float, "coupling strength lambda"),
    "beta": (_positive_float, "inverse temperature beta (> 0)"),
    "t_max": (_positive_float, "last time point (grid 0..t_max)"),
    "n_times": (_positive_int, "number of time points on 0..t_max"),
    "times": (_times, "explicit comma-separated time points, >= 0 and increasing (replaces --t-max/--n-times)"),
    "realizations": (_positive_int, "number of realizations R"),
    "seed": (_seed, "random seed, 0 <= seed < 2**63 (realization i uses fold_in(key(seed), i))"),
    "quantities": (_quantities, None),  # help built from the runner's tables
    "precision": (str, "float64 (for physics) or float32"),
    "chunk_size": (_positive_int, "realizations per chunk (default: about R/10, within --memory-budget)"),
    "memory_budget": (parse_bytes, "memory per device for one chunk (and for the series kept by "
                                   "--keep-realizations), e.g. 2GiB"),
    "output": (_path, "output file (netCDF4/HDF5)"),
    "figure": (_path, "summary figure path; its extension sets the format (default: output with .png)"),
}
FLAGS = {
    "overwrite": "recompute and replace an existing output (the old file stays until the new one is "
                 "written; finished chunks of the same settings are resumed)",
    "quiet": "no summary, no progress bar, no messages (errors are still printed)",
    "keep_realizations": "also store every realization's series in the output (held in memory until "
                         "the end; counted against --memory-budget)",
    "no_figure": "do not draw the summary figure",
}


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="qep-jax", description="Exact entropy production of spin-GORM ensembles (qep_jax).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run a spin-GORM ensemble, write the output file and figure",
                         description="Run a spin-GORM ensemble. Units hbar = k_B = 1.")
    run.add_argument("--config", type=str, default=None, help="TOML file with the same keys as the flags")
    for name, (conv, text) in OPTIONS.items():
        kwargs = {"choices": ("float64", "float32")} if name == "precision" else {}
        if name == "quantities":
            text = _quantities_help()
        elif DEFAULTS[name] is not None:
            text = f"{text} (default {DEFAULTS[name]})"
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None, help=text, **kwargs)
    for name, text in FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None, help=text)
    sub.add_parser("info", help="devices, precision, versions, linear-algebra backend")
    return parser


def _read_config(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found; check the --config path.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"config file {path} is not valid TOML ({err}); fix the syntax.") from None
    config = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in OPTIONS:
            conv = OPTIONS[name][0]
            if name == "precision" and value not in ("float64", "float32"):
                raise UsageError(f"config {path}: precision = {value!r}; use 'float64' or 'float32'.")
            try:
                if isinstance(value, bool):
                    raise argparse.ArgumentTypeError(f"{value!r} is true/false, not a value")
                joined = ",".join(str(v) for v in value) if name == "times" and isinstance(value, list) else value
                config[name] = conv(joined)
            except argparse.ArgumentTypeError as err:
                raise UsageError(f"config {path}: {key} = {value!r}: {err}.") from None
        elif name in FLAGS:
            if not isinstance(value, bool):
                raise UsageError(f"config {path}: {key} must be true or false, got {value!r}.")
            config[name] = value
        else:
            valid = ", ".join(list(OPTIONS) + list(FLAGS))
            raise UsageError(f"config {path}: unknown key {key!r}; valid keys: {valid}.")
    return config


def _settings(args) -> dict:
    settings = dict(DEFAULTS)
    config = {} if args.config is None else _read_config(args.config)
    flags = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    settings.update(config)
    settings.update(flags)
    # How messages name a setting: by the config key when the value came from the config file.
    settings["names"] = {k: (f"config {k}" if k in config and k not in flags else "--" + k.replace("_", "-"))
                         for k in DEFAULTS}
    _figure_choice(settings, config, flags)
    if isinstance(settings["memory_budget"], str):
        settings["memory_budget"] = parse_bytes(settings["memory_budget"])
    # Range checks sit in the converters, so a bad value is named by its flag or config key.
    import numpy as np

    from ._io import check_output_path

    check_output_path(settings["output"])
    if settings["times"] is None:
        grid_bytes = 8 * settings["n_times"]
        if grid_bytes > settings["memory_budget"]:  # before the grid is built: it used to raise MemoryError
            names = settings["names"]
            raise UsageError(f"{names['n_times']} {settings['n_times']}: the time grid alone needs {grid_bytes:.3g} "
                             f"bytes, more than {names['memory_budget']}; lower {names['n_times']}.")
        settings["times"] = list(np.linspace(0.0, settings["t_max"], settings["n_times"]))
        settings["names"]["times"] = settings["names"]["n_times"]
    if settings["precision"] == "float32":
        # The run stores its times in its precision: times distinct in float64 may coincide there.
        t32 = np.asarray(settings["times"], np.float32)
        same = np.flatnonzero(np.diff(t32) <= 0)
        if same.size:
            i = int(same[0])
            raise UsageError(f"times {settings['times'][i]!r} and {settings['times'][i + 1]!r} are the same number in "
                             f"float32 (--precision float32); space the times further apart or use float64.")
    settings["figure"] = _figure_path(settings)
    return settings


def _figure_choice(settings: dict, config: dict, flags: dict) -> None:
    """Settle --figure against --no-figure: both from one source contradict each other (one was
    silently ignored); a flag overrides the config file, as it does for every other key."""
    for source, where in ((flags, "flags --figure and --no-figure"), (config, "config keys figure and no_figure")):
        if source.get("no_figure") and source.get("figure"):
            raise UsageError(f"{where} contradict each other; give one of them.")
    if flags.get("figure"):
        settings["no_figure"] = False
    elif flags.get("no_figure"):
        settings["figure"] = None


def _figure_formats() -> set:
    from matplotlib.figure import Figure

    return set(Figure().canvas.get_supported_filetypes())


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _figure_path(s: dict) -> str | None:
    """The figure path, checked before the run: a bad one used to fail only after it (or, equal
    to the output, silently replaced the run file with the PNG)."""
    if s["no_figure"]:
        return None
    output = s["output"]
    figure = s["figure"] or os.path.splitext(output)[0] + ".png"
    if _same_file(figure, output):
        if s["figure"]:
            raise UsageError(f"--figure {figure} is the --output file; the figure would replace the run file. "
                             f"Choose another --figure.")
        raise UsageError(f"--output {output}: the default figure path (output with .png) is the output itself, "
                         f"so the figure would replace the run file; use --output "
                         f"{os.path.splitext(output)[0]}.h5, or give --figure or --no-figure.")
    extension = os.path.splitext(figure)[1][1:].lower()
    formats = _figure_formats()
    if extension not in formats:
        problem = f"unknown figure format .{extension}" if extension else "no extension to choose the format"
        raise UsageError(f"--figure {figure}: {problem}; end it in one of "
                         f"{', '.join('.' + f for f in sorted(formats))} (or pass --no-figure).")
    try:  # some formats need tools of their own (.pgf: LaTeX); find out before the run, not after it
        import io

        from matplotlib.figure import Figure

        probe = Figure(figsize=(1, 1))
        probe.add_subplot().set_title("t")
        probe.savefig(io.BytesIO(), format=extension)
    except Exception as err:  # noqa: BLE001 (matplotlib raises several kinds)
        raise UsageError(f"--figure {figure}: matplotlib cannot write .{extension} here ({err}); choose another "
                         f"format such as .png, or pass --no-figure.") from None
    directory = os.path.dirname(os.path.abspath(figure))
    if not os.path.isdir(directory):
        raise UsageError(f"--figure {figure}: directory {directory} does not exist; create it or choose another "
                         f"--figure.")
    if os.path.isdir(figure) or not os.access(directory, os.W_OK):
        raise UsageError(f"--figure {figure} cannot be written (a directory, or no write permission in "
                         f"{directory}); choose another --figure.")
    return figure


class _Progress:
    """Progress bar with rate and ETA on stderr; only drawn on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.calls = 0
        self.start = None
        self.first_done = 0

    def __call__(self, done: int, total: int):
        if not self.enabled:
            return
        now = time.perf_counter()
        self.calls += 1
        # The clock starts when the first chunk is done: that chunk includes the compilation, and
        # counting it made the early rates several times too low and the ETAs too long.
        if self.calls == 2:
            self.start, self.first_done = now, done
        elapsed = now - self.start if self.start is not None else 0.0
        rate = (done - self.first_done) / elapsed if elapsed > 0 and done > self.first_done else 0.0
        eta = f"{(total - done) / rate:5.0f} s" if rate > 0 else "   ? s"
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} realizations "
                         f"{rate:6.2f}/s  ETA {eta} ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _summary(result, runtime: float, output: str, figure: str | None, already: bool) -> str:
    info = result.info
    p = result.parameters
    lines = [
        f"spin-GORM ensemble: N={p['n_levels']} Delta={p['delta']:g} lambda={p['coupling_strength']:g} "
        f"beta={p['beta']:g}, {p['n_realizations']} realizations, seed {p['seed']}, {p['precision']}",
        f"final values at t = {result.times[-1]:g} (mean +- standard error; hbar = k_B = 1"
        + ("; one realization has no standard error: nan" if p["n_realizations"] == 1 else "") + "):",
    ]
    width = max(len(q) for q in result.mean) + 6
    for q in result.mean:
        mean, err = result.mean[q][-1], result.standard_error[q][-1]
        for r, (m, e) in enumerate(zip(mean.reshape(-1), err.reshape(-1))):
            label = q if mean.ndim == 0 else f"{q}[r={r}]"
            lines.append(f"  {label:<{width}} {m: .6e} +- {e:.2e}")
    if already:
        lines.append(f"output {output} already holds this run; nothing recomputed (pass --overwrite to redo it).")
    else:
        lines.append(f"runtime {runtime:.1f} s on {info.get('device_count', 1)} x {info.get('device', '?')} "
                     f"(chunk size {info.get('chunk_size')}, {info.get('resumed_realizations', 0)} resumed)")
        lines.append(f"output: {output}")
    if figure:
        lines.append(f"figure: {figure}")
    return "\n".join(lines)


def _draw_figure(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._ensemble import QUANTITIES

    names = list(result.mean)
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    # Constrained layout keeps room for the suptitle; tight_layout ignored it and the title
    # overlapped the first row of panel titles (all 14 quantities: 7 rows).
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.0 * nrows), squeeze=False, sharex=True,
                             layout="constrained")
    t = result.times
    for ax, q in zip(axes.flat, names):
        mean = result.mean[q].reshape(len(t), -1)
        err = result.standard_error[q].reshape(len(t), -1)
        for r in range(mean.shape[1]):
            label = None if mean.shape[1] == 1 else f"r={r}"
            ax.plot(t, mean[:, r], lw=1.2, label=label)
            ax.fill_between(t, mean[:, r] - err[:, r], mean[:, r] + err[:, r], alpha=0.3, lw=0)
        ax.set_title(QUANTITIES[q].long_name, fontsize=8)
        ax.set_ylabel(f"{q}\n[{QUANTITIES[q].units}]", fontsize=8)
        if label:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("time t  (hbar = k_B = 1)")
    p = result.parameters
    fig.suptitle(f"spin-GORM N={p['n_levels']}, Delta={p['delta']:g}, lambda={p['coupling_strength']:g}, "
                 f"beta={p['beta']:g}: mean +- 1 standard error over {p['n_realizations']} realizations",
                 fontsize=9)
    return fig


def _figure(result, path: str) -> None:
    import matplotlib.pyplot as plt

    fig = _draw_figure(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _memory_names(names: dict) -> dict:
    """How the runner's memory errors name its arguments: by flag, or by config key where the
    value came from the config file."""
    return {"memory_budget": names["memory_budget"], "chunk_size": names["chunk_size"],
            "n_levels": names["n_levels"], "n_realizations": names["realizations"], "times": names["times"],
            "quantities": names["quantities"], "keep_realizations": names["keep_realizations"]}


def _check_memory(model, s: dict) -> None:
    """The runner's memory checks before anything is read or written, in terms of the flags."""
    import jax

    from ._ensemble import DEFAULT_QUANTITIES, _vectorizes, check_memory
    from ._open_system import InputError

    try:
        check_memory(model, len(s["times"]), s["realizations"], s["quantities"] or DEFAULT_QUANTITIES,
                     s["keep_realizations"], s["chunk_size"], s["memory_budget"], jax.device_count(),
                     names=_memory_names(s["names"]), vectorized=_vectorizes(jax.devices()[0]))
    except InputError as err:
        raise UsageError(str(err)) from None


def _compute(s: dict, stage: dict):
    """Run (or resume, or load) the ensemble; ``stage['step']`` says how far it got, for Ctrl-C."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import qep_jax
    from ._ensemble import with_precision
    from ._io import run_to_file

    say = (lambda msg: None) if s["quiet"] else (lambda msg: print(msg, file=sys.stderr))
    model = with_precision(qep_jax.SpinGORM(s["n_levels"], s["delta"], s["coupling"], s["beta"]), s["precision"])
    _check_memory(model, s)
    progress = _Progress(enabled=not s["quiet"] and sys.stderr.isatty())
    stage["step"] = "running"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 warning is restated below in one line
        result, already = run_to_file(
            model, s["times"], s["realizations"], s["output"], seed=s["seed"], quantities=s["quantities"],
            keep_realizations=s["keep_realizations"], overwrite=s["overwrite"], report=say,
            chunk_size=s["chunk_size"], memory_budget=s["memory_budget"], progress=progress,
        )
    stage["step"] = "written"
    if s["precision"] == "float32":
        say("note: float32 loses accuracy of entropy differences near t = 0; use --precision float64 for physics.")
    return result, already


def _interrupt_message(err: KeyboardInterrupt, s: dict, step: str) -> str:
    """What Ctrl-C left behind: it used to promise kept chunks even when none existed."""
    output = s["output"]
    if step == "written" or getattr(err, "output_written", False):
        # Also a press during the output's rename or the clean-up of the parts (run_to_file then
        # says so): it used to report "6 of 6 realizations are kept in <output>.parts".
        what = "the figure and summary" if s["figure"] else "the summary"
        return (f"interrupted after {output} was written (it is complete); rerun the same command for "
                f"{what} (nothing is recomputed).")
    kept = getattr(err, "kept_realizations", 0)
    if kept:
        return (f"interrupted: {kept} of {err.n_realizations} realizations are kept in {err.parts_directory}; "
                f"rerun the same command to resume.")
    if step == "running":
        return f"interrupted before the first chunk finished; nothing was kept and {output} was not changed."
    return "interrupted before the run started; nothing was written."


# Set once a run has printed its summary: a press after that (before the process ignores SIGINT)
# is not an interruption; it was reported as "interrupted before the run started" with exit 130.
_FINISHED = {"run": False}


def _run(args) -> int:
    s = _settings(args)
    stage = {"step": "setup"}
    t0 = time.perf_counter()
    try:
        # run_ensemble stops after a saved chunk on a press Python dropped; these checks cover
        # the rest of the command (see _interrupt).
        with remember_ctrl_c() as ctrl_c:
            result, already = _compute(s, stage)
            runtime = time.perf_counter() - t0
            ctrl_c.check()
            if s["figure"]:
                try:
                    _figure(result, s["figure"])
                except Exception as err:  # noqa: BLE001 (the run is saved; say so instead of a traceback)
                    print(f"qep-jax: error: the figure {s['figure']} could not be written ({err}); the run is "
                          f"complete in {s['output']}: rerun with another --figure or --no-figure (nothing is "
                          f"recomputed).", file=sys.stderr)
                    return 1
            ctrl_c.check()
            if not s["quiet"]:  # a press here said "interrupted before the run started; nothing was written"
                print(_summary(result, runtime, s["output"], s["figure"], already))
            _FINISHED["run"] = True
    except KeyboardInterrupt as err:
        sys.stderr.write("\n" + _interrupt_message(err, s, stage["step"]) + "\n")
        return EXIT_INTERRUPTED
    return 0


def _info() -> int:
    import jax
    import jaxlib
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from . import __version__

    devices = jax.devices()
    backend = jax.default_backend()
    linalg = {"cpu": _cpu_linalg(),
              "gpu": "cuSOLVER / cuBLAS (eigh: syevd or batched syevj)",
              "tpu": "XLA TPU eigensolver"}.get(backend, backend)
    lines = [
        f"qep_jax {__version__}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}",
        f"backend: {backend}; linear algebra: {linalg}",
        f"devices ({len(devices)} local of {jax.device_count()} global, process "
        f"{jax.process_index()} of {jax.process_count()}):",
    ]
    lines += [f"  {d.id}: {d.platform} {d.device_kind}" for d in devices]
    lines.append("precision: qep-jax run computes in float64 by default (--precision float32 to change).")
    from ._linalg import batch_eigh_workers, host_cores

    lines.append(f"CPU threads: {host_cores()} cores; {_blas_threads_line()}; batched "
                 f"eigendecompositions split over {batch_eigh_workers(2 * 64)} host thread(s).")
    lines.append(_blas_kernels_line())
    if os.environ.get("XLA_FLAGS"):
        lines.append(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
    print("\n".join(lines))
    return 0


def _cpu_linalg() -> str:
    """Where CPU eigendecompositions run (``_linalg``): the old line named only jaxlib's LAPACK."""
    import numpy as np

    from ._linalg import _callbacks_safe

    try:
        numpy_lapack = np.show_config(mode="dicts")["Build Dependencies"]["lapack"]["name"]
    except Exception:  # older NumPy: no dict form
        numpy_lapack = "LAPACK"
    if not _callbacks_safe():
        return ("jaxlib's LAPACK kernels (syevd), one matrix at a time (several CPU devices: host callbacks "
                "would hang)")
    return (f"single matrices: jaxlib's LAPACK kernels (syevd); batched eigh/eigvalsh: NumPy's "
            f"{numpy_lapack} through host callbacks")


def _blas_kernels_line() -> str:
    """The BLAS behind the host eigendecompositions and its kernels: OPENBLAS_CORETYPE can force
    older ones (a 400 x 400 eigh took 13.2 ms with Haswell kernels against 9.2 ms with the
    SkylakeX ones OpenBLAS detected, on an AVX-512 AMD EPYC)."""
    from threadpoolctl import threadpool_info

    found = [f"{i['internal_api']} {i.get('version') or ''} ({i.get('architecture') or 'unknown'} kernels)"
             for i in threadpool_info() if i["user_api"] == "blas"]
    line = "BLAS loaded: " + ("; ".join(found) if found else "none reported by threadpoolctl")
    if os.environ.get("OPENBLAS_CORETYPE"):
        line += f"; OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set (unset it to let OpenBLAS choose)"
    return line


def _blas_threads_line() -> str:
    # pin_blas_threads sets the variables in this very process, so os.environ alone cannot say
    # whether the user chose them.
    pinned = [name for name in _THREAD_VARIABLES if name in _PINNED]
    mine = ", ".join(f"{n}={os.environ[n]}" for n in _THREAD_VARIABLES if n in os.environ and n not in pinned)
    if mine:
        return f"BLAS threads set by you: {mine}"
    if pinned:
        return (f"BLAS threads: none set by you; qep-jax pinned {', '.join(f'{n}=1' for n in pinned)} "
                f"(set one of them to choose)")
    return "BLAS threads: none set (qep-jax run pins 1 unless you set OPENBLAS_NUM_THREADS, OMP_ or MKL_)"


def main(argv=None) -> int:
    """Entry point of ``qep-jax``; returns the exit code."""
    from ._open_system import InputError

    parser = _build_parser()
    _FINISHED["run"] = False
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "info":
            return _info()
        parser.print_help()
        return EXIT_USAGE
    except KeyboardInterrupt:  # _run reports what was kept; this covers parsing and info
        if _FINISHED["run"]:
            return 0
        print("\ninterrupted before the run started; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as err:
        print(f"qep-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, FloatingPointError) as err:
        print(f"qep-jax: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of stdout went away (qep-jax info | head -1): nothing of ours failed. stdout goes
        # to devnull so that the interpreter's last flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"qep-jax: error: {err.strerror or err} ({err.filename or ''}); check the path and permissions.",
              file=sys.stderr)
        return 1


_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_PINNED: set = set()  # variables pin_blas_threads set in this process (for qep-jax info)


def pin_blas_threads() -> bool:
    """One BLAS thread per LAPACK call unless the user chose a thread count; True if it pinned.

    qep_jax then spreads batched eigendecompositions over the cores itself (``_linalg``): the
    default job took 9.1 s pinned against 14.1 s with a two-threaded OpenBLAS (2-core AMD EPYC).
    The environment variables reach the BLAS copies loaded later (SciPy's, behind jaxlib's
    kernels) and ``_linalg``; threadpoolctl limits the copies already loaded (NumPy's).
    """
    if any(name in os.environ for name in _THREAD_VARIABLES):
        return False
    from threadpoolctl import threadpool_limits

    for name in _THREAD_VARIABLES:
        os.environ[name] = "1"
        _PINNED.add(name)
    threadpool_limits(limits=1, user_api="blas")
    return True


def entry_point() -> None:
    """The ``qep-jax`` script and ``python -m qep_jax``: :func:`pin_blas_threads`, then :func:`main`."""
    try:
        # First of all: a press that Python drops before run's own handling starts (in a gc
        # callback of jax) was lost, and the run finished with exit 0.
        with remember_ctrl_c():
            pin_blas_threads()
            code = main()
    except KeyboardInterrupt:  # before main could catch it, or after it returned
        if _FINISHED["run"]:
            code = 0
        else:
            print("\ninterrupted before the run started; nothing was written.", file=sys.stderr)
            code = EXIT_INTERRUPTED
    # The work is done (or reported): a Ctrl-C during the interpreter's teardown killed the
    # process with SIGINT (exit -2) or printed an 'Exception ignored' traceback after a finished run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == EXIT_INTERRUPTED:
        # Ctrl-C during the first chunk lands inside XLA's compilation (backend.compile_and_load);
        # the normal interpreter shutdown then tears down half-built XLA objects and crashed with
        # SIGSEGV in 5 of 7 tries (exit -11 instead of 130). os._exit skips that teardown; the
        # parts are already fsynced, so only stdio needs flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
