"""The ``qep-jax`` command line: ``qep-jax run`` (spin-GORM ensemble to a file) and ``qep-jax info``.

Only the public API and the runner/IO modules are used. Every user error ends as one line on
stderr with a fix and a non-zero exit code; tracebacks are reserved for bugs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import tomllib
import warnings

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
    return values


def _quantities(text):
    from ._ensemble import QUANTITIES

    names = [q.strip() for q in (text if isinstance(text, list) else str(text).split(",")) if q.strip()]
    bad = [q for q in names if q not in QUANTITIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown quantity {bad[0] if bad else '(none)'!r}; choose from {','.join(QUANTITIES)}")
    return names


# name -> (converter, help); flags are --name-with-dashes, config keys name_with_underscores.
OPTIONS = {
    "n_levels": (_positive_int, "reservoir levels N (>= 2)"),
    "delta": (_finite_float, "spin splitting Delta"),
    "coupling": (_finite_float, "coupling strength lambda"),
    "beta": (_finite_float, "inverse temperature beta (> 0)"),
    "t_max": (_finite_float, "last time point (grid 0..t_max)"),
    "n_times": (_positive_int, "number of time points on 0..t_max"),
    "times": (_times, "explicit comma-separated time points (replaces --t-max/--n-times)"),
    "realizations": (_positive_int, "number of realizations R"),
    "seed": (_nonnegative_int, "random seed (realization i uses fold_in(key(seed), i))"),
    "quantities": (_quantities, "comma-separated quantities to average (see docs/cli.md)"),
    "precision": (str, "float64 (default, for physics) or float32"),
    "chunk_size": (_positive_int, "realizations per chunk (default: about R/10, within --memory-budget)"),
    "memory_budget": (parse_bytes, "memory per device for one chunk, e.g. 2GiB"),
    "output": (str, "output file (netCDF4/HDF5)"),
    "figure": (str, "summary figure path (default: output with .png)"),
}
FLAGS = ("overwrite", "quiet", "keep_realizations", "no_figure")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qep-jax", description="Exact entropy production of spin-GORM ensembles (qep_jax).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run a spin-GORM ensemble, write the output file and figure",
                         description="Run a spin-GORM ensemble. Units hbar = k_B = 1.")
    run.add_argument("--config", type=str, default=None, help="TOML file with the same keys as the flags")
    for name, (conv, text) in OPTIONS.items():
        kwargs = {"choices": ("float64", "float32")} if name == "precision" else {}
        run.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None,
                         help=f"{text} (default {DEFAULTS[name]})", **kwargs)
    for name in FLAGS:
        run.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None)
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
                if name == "times" and isinstance(value, list):
                    value = ",".join(str(v) for v in value)
                if isinstance(value, bool) and name not in ("output", "figure"):
                    raise argparse.ArgumentTypeError("must not be true/false")
                config[name] = conv(value)
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
    if args.config is not None:
        settings.update(_read_config(args.config))
    settings.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if isinstance(settings["memory_budget"], str):
        settings["memory_budget"] = parse_bytes(settings["memory_budget"])
    if settings["n_levels"] < 2:
        raise UsageError(f"--n-levels {settings['n_levels']} is too small; use N >= 2.")
    if settings["beta"] <= 0:
        raise UsageError(f"--beta {settings['beta']} must be > 0 (inverse temperature).")
    if settings["times"] is None:
        if settings["t_max"] <= 0:
            raise UsageError(f"--t-max {settings['t_max']} must be > 0; or give --times 0,10,20.")
        import numpy as np

        settings["times"] = list(np.linspace(0.0, settings["t_max"], settings["n_times"]))
    return settings


class _Progress:
    """Progress bar with rate and ETA on stderr; only drawn on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.start = None
        self.first_done = 0

    def __call__(self, done: int, total: int):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start, self.first_done = now, done
        elapsed = now - self.start
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
        f"final values at t = {result.times[-1]:g} (mean +- standard error; hbar = k_B = 1):",
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


def _figure(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._ensemble import QUANTITIES

    names = list(result.mean)
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.0 * nrows), squeeze=False, sharex=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run(args) -> int:
    s = _settings(args)
    import jax

    jax.config.update("jax_enable_x64", True)
    import qep_jax
    from ._ensemble import with_precision
    from ._io import run_to_file

    quiet = s["quiet"]
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    model = with_precision(qep_jax.SpinGORM(s["n_levels"], s["delta"], s["coupling"], s["beta"]), s["precision"])
    output = s["output"]
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    t0 = time.perf_counter()
    store_hint = output + ".parts"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the float32 warning is restated below in one line
            result, already = run_to_file(
                model, s["times"], s["realizations"], output, seed=s["seed"], quantities=s["quantities"],
                keep_realizations=s["keep_realizations"], overwrite=s["overwrite"], report=say,
                chunk_size=s["chunk_size"], memory_budget=s["memory_budget"], progress=progress,
            )
    except KeyboardInterrupt:
        sys.stderr.write(f"\ninterrupted: finished chunks are kept in {store_hint}; "
                         f"rerun the same command to resume.\n")
        return EXIT_INTERRUPTED
    if s["precision"] == "float32":
        say("note: float32 loses accuracy of entropy differences near t = 0; use --precision float64 for physics.")
    runtime = time.perf_counter() - t0
    figure = None
    if not s["no_figure"]:
        figure = s["figure"] or os.path.splitext(output)[0] + ".png"
        _figure(result, figure)
    if not quiet:
        print(_summary(result, runtime, output, figure, already))
    return 0


def _info() -> int:
    import jax
    import jaxlib
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from . import __version__

    devices = jax.devices()
    backend = jax.default_backend()
    linalg = {"cpu": "LAPACK kernels bundled with jaxlib (eigh: syevd)",
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

    chosen = ", ".join(f"{name}={os.environ[name]}" for name in _THREAD_VARIABLES if name in os.environ)
    lines.append(f"CPU threads: {host_cores()} cores, {chosen or 'BLAS thread count not set'}; batched "
                 f"eigendecompositions split over {batch_eigh_workers(2 * 64)} host thread(s).")
    if os.environ.get("XLA_FLAGS"):
        lines.append(f"XLA_FLAGS={os.environ['XLA_FLAGS']}")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    """Entry point of ``qep-jax``; returns the exit code."""
    from ._open_system import InputError

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "info":
            return _info()
        parser.print_help()
        return EXIT_USAGE
    except UsageError as err:
        print(f"qep-jax: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as err:
        print(f"qep-jax: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"qep-jax: error: {err.strerror or err} ({err.filename or ''}); check the path and permissions.",
              file=sys.stderr)
        return 1


_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
    threadpool_limits(limits=1, user_api="blas")
    return True


def entry_point() -> None:
    """The ``qep-jax`` script and ``python -m qep_jax``: :func:`pin_blas_threads`, then :func:`main`."""
    pin_blas_threads()
    sys.exit(main())
