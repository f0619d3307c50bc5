"""Run benchmark configurations in order and print one JSON line per configuration.

    python benchmarks/_worker.py '[{"route": "qutip-cheap", "n": 32, "t": 100}, {"route": "qutip-cheap", "n": 64, "t": 100}]'

The runner (``_common.run_configs``) starts one fresh process per configuration, so the peak RSS
it reports is that configuration's own.

Config keys: ``route`` (a name in ``_routes.ROUTES``, ``ours-simulate``, ``ours-ensemble`` or one of
``_routes.ENSEMBLE_REALIZATIONS``), ``n``, ``t``, optional ``realizations`` (all three) and ``full``
(the first two), ``batch_size`` (``ours-simulate``), ``chunk_size`` (``ours-ensemble``),
``repeats`` (default: as many as fit ``budget_s``, at most 7), ``budget_s`` (default 2), ``seed``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (sets the thread environment before numpy/jax load)


def _reference(n, x, times, full):
    import jax.numpy as jnp

    import qep_jax
    from _routes import CHEAP_KEYS, FULL_KEYS, _trajectory_series

    model, _, _ = _common.problem(n, 2)
    traj = qep_jax.evolve(model.open_system(jnp.asarray(x)), jnp.asarray(times), reservoir_entropies=full)
    return _trajectory_series(traj, FULL_KEYS if full else CHEAP_KEYS)


def _route_simulate(n, times, realizations, seed, batch_size=None, full=False):
    """``SpinGORM.simulate`` of ``realizations`` realizations (cheap set unless ``full``), ``batch_size``
    realizations at a time (``None``: the library's default); check: realization 0 (with the
    mutual information if ``full``)."""
    import jax
    import jax.numpy as jnp

    model, _, _ = _common.problem(n, 2, seed)
    key = jax.random.key(seed)
    t = jnp.asarray(times)

    def extract(out):
        keys = ("entropy_production", "system_entropy") + (("mutual_information",) if full else ())
        return {k: np.asarray(getattr(out, k)[0]) for k in keys}

    return (lambda: model.simulate(key, t, realizations, reservoir_entropies=full, batch_size=batch_size)), extract


def _route_ensemble(n, times, realizations, seed, chunk_size=None, full=False):
    """``qep_jax.run_ensemble`` (what ``qep-jax run`` calls) over ``realizations`` realizations,
    default chunking unless ``chunk_size``; cheap quantities (plus the mutual information if
    ``full``); check: realization 0."""
    import qep_jax

    model, _, _ = _common.problem(n, 2, seed)
    quantities = ("entropy_production", "system_entropy") + (("mutual_information",) if full else ())

    def fn():
        return qep_jax.run_ensemble(model, times, realizations, seed=seed, quantities=quantities,
                                    keep_realizations=True, chunk_size=chunk_size)

    def extract(out):
        return {q: np.asarray(out.series[q][0]) for q in quantities}, out.info["chunk_size"]

    return fn, extract


def _check(route, n, x, times, values) -> tuple[float | None, bool | None, str]:
    """Largest deviation from an independent value and whether it is within tolerance."""
    if route == "ours-diag":
        from _common import dense_problem

        ref = np.linalg.eigvalsh(dense_problem(n, x)[0])
        err = float(np.max(np.abs(values["energies"] - ref)))
        return err, err < _common.CHECK_TOL, "energies vs numpy.linalg.eigvalsh"
    if route.startswith("ours-grad"):
        g, fd = float(values["gradient"]), float(values["finite_difference"])
        err = abs(g - fd) / max(abs(fd), 1e-12)
        return err, err < 1e-5, "relative deviation from central finite difference (h = 1e-6)"
    if route in ("ours-cheap", "ours-full"):
        return None, None, "reference implementation itself"
    from _routes import is_full

    full = is_full(route)
    ref = _reference(n, x, times, full)
    errors = {k: _deviation(values[k], ref[k]) for k in ref}
    worst = max(errors, key=errors.get)
    return errors[worst], errors[worst] < _common.CHECK_TOL, f"max |peer - qep_jax| over {sorted(ref)} (worst: {worst})"


def _deviation(value, reference) -> float:
    """``max |value - reference|``, ``inf`` if either has a NaN or inf: Python's ``max`` over a NaN
    kept the other keys' value, so a NaN series other than the first passed the check."""
    diff = np.abs(np.asarray(value) - np.asarray(reference))
    return float(np.max(diff)) if np.all(np.isfinite(diff)) else math.inf


def run(config: dict) -> dict:
    from _routes import ENSEMBLE_REALIZATIONS, ROUTES, is_full

    route, n, n_times = config["route"], int(config["n"]), int(config["t"])
    seed = int(config.get("seed", _common.SEED))
    _, x, times = _common.problem(n, n_times, seed)
    if route in ENSEMBLE_REALIZATIONS:
        config = dict(config, full=is_full(route))
    if route == "ours-simulate" or route in ENSEMBLE_REALIZATIONS:
        fn, extract = _route_simulate(n, times, int(config["realizations"]), seed, config.get("batch_size"),
                                      bool(config.get("full", False)))
    elif route == "ours-ensemble":
        fn, extract = _route_ensemble(n, times, int(config["realizations"]), seed, config.get("chunk_size"),
                                      bool(config.get("full", False)))
    else:
        fn, extract = ROUTES[route](n, x, times)
    baseline = _common.max_rss_mib()
    out, timing = _common.time_call(fn, repeats=config.get("repeats"), budget_s=config.get("budget_s", 2.0))
    peak = _common.max_rss_mib()
    values = extract(out)
    chunk_used = None
    if route == "ours-ensemble":
        values, chunk_used = values
    many = route in ("ours-simulate", "ours-ensemble") or route in ENSEMBLE_REALIZATIONS
    if many:
        ref = _reference(n, x, times, bool(config.get("full", False)))
        err = max(_deviation(values[k], ref[k]) for k in values)
        check = (err, err < _common.CHECK_TOL, f"realization 0 vs qep_jax.evolve over {sorted(values)}")
    else:
        check = _check(route, n, x, times, values)
    result = dict(config, **timing)
    if many:
        result["run_per_realization_s"] = timing["run_s"] / int(config["realizations"])
        result["run_cpu_per_realization_s"] = timing["run_cpu_s"] / int(config["realizations"])
    if chunk_used is not None:
        result["chunk_size_used"] = chunk_used
    result.update(
        peak_rss_mib=peak,
        baseline_rss_mib=baseline,
        check_error=check[0],
        check_ok=check[1],
        check_what=check[2],
    )
    return result


import numpy as np  # noqa: E402

if __name__ == "__main__":
    configs = json.loads(sys.argv[1])
    for config in configs if isinstance(configs, list) else [configs]:
        try:
            result = run(config)
        except Exception as exc:  # report and go on with the next (larger) configuration
            result = dict(config, error=f"{type(exc).__name__}: {exc}"[:300])
        print(json.dumps(result, default=float), flush=True)
