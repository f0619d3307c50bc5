"""Shared pieces of the benchmark scripts: the problem, timing, memory, environment, subprocess runner.

Every benchmark solves the same problem: one spin-GORM realization (``delta = 0.1``,
``lambda = 0.1``, ``beta = 10``; the paper's Figure 1 values) with ``X = goe(fold_in(key, 0), N)``,
the matrix :meth:`qep_jax.SpinGORM.simulate` uses for realization 0, on ``T`` equally spaced
times in ``[0, T_END]``. The same ``X`` (as a NumPy array) is handed to every implementation.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Thread settings applied to every worker before NumPy / SciPy / JAX are imported. jaxlib calls
# SciPy's LAPACK (OpenBLAS) for eigh on CPU, and QuTiP/SciPy use the same library: one thread each
# keeps the two from oversubscribing the 2 cores and makes every route single-threaded, so wall
# LAPACK calls compare like with like. XLA's own CPU matmuls still use every core (CPU time / wall
# time ~ 2 on 2 cores); CPU time is recorded next to wall time with each result.
THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for _name, _value in THREAD_ENV.items():
    os.environ.setdefault(_name, _value)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

DELTA, COUPLING, BETA = 0.1, 0.1, 10.0
T_END = 200.0
SEED = 0

# Agreement every peer must reach with qep_jax before its time counts (absolute, in nats; the
# quantities are O(1), float64 rounding of an O(D^3) dense route stays near 1e-12).
CHECK_TOL = 1e-8


def enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def problem(n: int, n_times: int, seed: int = SEED):
    """``(model, x, times)``: SpinGORM, ``(N, N)`` NumPy GOE matrix, ``(T,)`` NumPy time grid."""
    import jax
    import numpy as np

    import qep_jax

    enable_x64()
    model = qep_jax.SpinGORM(n_levels=n, delta=DELTA, coupling_strength=COUPLING, beta=BETA)
    x = np.asarray(qep_jax.goe(jax.random.fold_in(jax.random.key(seed), 0), n))
    times = np.linspace(0.0, T_END, n_times)
    return model, x, times


def dense_problem(n: int, x):
    """Dense NumPy ingredients for the peers: ``(H, H_r (x) 1-free, rho0, rho_r_eq)``.

    ``H`` ``(2N, 2N)``, ``h_r`` ``(N,)`` reservoir levels, ``rho0 = |0><0| (x) rho_r^eq``
    ``(2N, 2N)``, ``rho_r_eq`` ``(N, N)`` diagonal canonical state.
    """
    import numpy as np

    h_r = np.linspace(-0.5, 0.5, n)
    sz = np.diag([-1.0, 1.0])
    sx = np.array([[0.0, 1.0], [1.0, 0.0]])
    h = DELTA / 2 * np.kron(sz, np.eye(n)) + np.kron(np.eye(2), np.diag(h_r))
    h = h + COUPLING * np.kron(sx, x / np.sqrt(8.0 * n))
    p = np.exp(-BETA * (h_r - h_r.min()))
    p /= p.sum()
    rho_r_eq = np.diag(p)
    rho0 = np.kron(np.diag([1.0, 0.0]), rho_r_eq)
    return h, h_r, rho0, rho_r_eq


def block(x):
    """Wait for every JAX array in the pytree ``x`` (no-op for NumPy)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except ImportError:  # pragma: no cover
        return x


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_call(fn, *, repeats: int | None = None, budget_s: float = 2.0, max_repeats: int = 7):
    """Time ``fn()``: the first call (trace + compile + run) and the median of repeated calls.

    ``repeats=None``: a second call is timed, then more calls are added until about ``budget_s``
    is spent, with at least 3 and at most ``max_repeats`` timed calls (3 also when one call
    alone exceeds the budget, so every median, the N = 200 target row's included, is one of
    three or more). Returns ``(result_of_last_call, timing_dict)``; ``compile_s = first_s - run_s`` is
    an estimate of tracing + compilation for jitted routes.
    """
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    first_cpu = _cpu_seconds() - c0
    walls, cpus = [], []

    def once():
        nonlocal out
        c, t = _cpu_seconds(), time.perf_counter()
        out = block(fn())
        walls.append(time.perf_counter() - t)
        cpus.append(_cpu_seconds() - c)

    once()
    if repeats is None:
        repeats = int(min(max_repeats, max(3, budget_s // walls[0])))
    while len(walls) < repeats:
        once()
    run = statistics.median(walls)
    return out, {
        "first_s": first,
        "first_cpu_s": first_cpu,
        "run_s": run,
        "run_min_s": min(walls),
        "run_cpu_s": statistics.median(cpus),
        "compile_s": max(first - run, 0.0),
        "repeats": len(walls),
    }


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """What produced the numbers: CPU, cores, library versions, thread settings, load."""
    import jax
    import jaxlib
    import numpy as np

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "devices": [str(d) for d in jax.devices()],
        "threads": {k: os.environ.get(k) for k in THREAD_ENV},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "blas": blas_libraries(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "load_average": os.getloadavg(),
        "git": _git_state(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    import importlib.metadata

    for name in ("qutip", "scipy", "dynamiqs"):
        try:  # metadata, not import: importing dynamiqs alone takes seconds
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info


def blas_libraries() -> list[str]:
    """Loaded BLAS copies with their kernel architecture: OPENBLAS_CORETYPE can force older kernels
    (this VM sets Haswell: a 400 x 400 eigh took 13.2 ms against 9.2 ms with its detected SkylakeX)."""
    from threadpoolctl import threadpool_info

    return [f"{i['internal_api']} {i.get('version')} {i.get('architecture')}" for i in threadpool_info()
            if i["user_api"] == "blas"]


def _git_state() -> str:
    """Commit of the working tree and whether qep_jax/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "qep_jax"], cwd=HERE.parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" (qep_jax/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peer_available(name: str) -> bool:
    import importlib.util

    module = {"qutip": "qutip", "dynamiqs": "dynamiqs"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def run_configs(configs: list[dict], *, in_process: bool, timeout_s: float = 300.0, retries: int = 1,
                log=print) -> list[dict]:
    """Run benchmark configurations, each in a fresh subprocess (default) or all in this process.

    A fresh process per configuration makes its peak RSS (``ru_maxrss``) its own;
    ``baseline_rss_mib`` is the peak before the timed work (interpreter, libraries, set-up), so
    ``peak - baseline`` is what the computation added. A configuration that fails or exceeds
    ``timeout_s`` is retried ``retries`` times (XLA's CPU runtime was seen to hang, rarely, in a
    repeated call), then returned with an ``error`` field. In-process runs (smoke tests) record
    no memory.
    """
    results: list[dict] = []
    if in_process:
        from _worker import run

        for config in configs:
            result = dict(run(config), peak_rss_mib=None, baseline_rss_mib=None)
            log(_summary(result))
            results.append(result)
        return results
    env = dict(os.environ, **THREAD_ENV)
    for config in configs:
        for attempt in range(retries + 1):
            cmd = [sys.executable, str(HERE / "_worker.py"), json.dumps(config)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                result = json.loads(lines[-1]) if lines else dict(
                    config, error=f"exit {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-2:]))
            except subprocess.TimeoutExpired:
                result = dict(config, error=f"timeout after {timeout_s:.0f} s")
            if "error" not in result:
                break
            log(_summary(result) + (" (retrying)" if attempt < retries else ""))
        result["attempts"] = attempt + 1
        log(_summary(result))
        results.append(result)
    return results


def _summary(r: dict) -> str:
    head = f"{r['route']:>16} N={r['n']:<5} T={r['t']:<5}" + (
        f" R={r['realizations']:<4}" if "realizations" in r else "")
    if "error" in r:
        return head + " ERROR " + r["error"]
    rss = f" rss {r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else ""
    err = "" if r.get("check_error") is None else f" check {r['check_error']:.1e} {'ok' if r['check_ok'] else 'FAIL'}"
    return head + f" first {r['first_s']:.3f} s  run {r['run_s']:.4g} s (x{r['repeats']}){rss}{err}"


def write_table(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as CSV (union of keys, in first-seen order)."""
    import csv

    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=float))


def fit_exponent(ns, ts, n_min: int | None = None):
    """Least-squares slope of ``log t`` against ``log n`` over ``n >= n_min``; ``None`` if < 2 points."""
    import numpy as np

    pairs = [(n, t) for n, t in zip(ns, ts) if t and t > 0 and (n_min is None or n >= n_min)]
    if len(pairs) < 2:
        return None
    ln, lt = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(ln, lt, 1)[0])
