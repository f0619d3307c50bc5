"""float32 against float64 on the same GOE matrices: the numbers of README "Precision".

    python benchmarks/float32_precision.py          # about a minute on 2 CPU cores
    python benchmarks/float32_precision.py --tiny   # smoke run

The float64 model is ``SpinGORM(N, 0.1, 0.1, beta)``, the float32 one the same built from float32
scalars; ``simulate`` draws float64 GOE matrices and rounds them for the float32 run (x64 on), so
both see the same realizations. Prints the largest absolute error of each entropy over the time
grid and realizations, then at late times (1e2 to 1e6, where the phase error eps |E| t grows), and
writes ``benchmarks/results/float32_precision.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import qep_jax  # noqa: E402

FIELDS = ("entropy_production", "mutual_information", "reservoir_relative_entropy", "entropy_production_open",
          "system_entropy")


def errors(n, beta, times, key, realizations):
    """Largest |float32 - float64| per field, and both runs' entropy production ``(R, T)``."""
    exact = qep_jax.SpinGORM(n, 0.1, 0.1, beta).simulate(jax.random.key(key), times, realizations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32 warning is the point here
        model32 = qep_jax.SpinGORM(n, np.float32(0.1), np.float32(0.1), np.float32(beta))
        single = model32.simulate(jax.random.key(key), times, realizations)
    err = {f: float(np.max(np.abs(np.asarray(getattr(exact, f)) - np.asarray(getattr(single, f), float))))
           for f in FIELDS}
    return err, np.asarray(exact.entropy_production), np.asarray(single.entropy_production, float)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    sizes, keys, grid = ((8,), range(1, 2), jnp.linspace(0, 10, 5)) if args.tiny else \
        ((20, 100), range(1, 13), jnp.linspace(0, 100, 51))
    out = {"device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}", "beta_10": {}, "beta": {}}
    for n in sizes:
        out["beta_10"][n] = errors(n, 10.0, grid, 0, 4)[0]
        print(f"N = {n}, beta = 10, key 0: " + ", ".join(f"{f} {v:.2g}" for f, v in out["beta_10"][n].items()))
    n = sizes[0]
    out["keys_max_entropy_production"] = max(errors(n, 10.0, grid, k, 4)[0]["entropy_production"] for k in keys)
    print(f"N = {n}, keys {keys.start}-{keys.stop - 1}: largest entropy_production error "
          f"{out['keys_max_entropy_production']:.2g}")
    for beta in (100.0, 1000.0):
        out["beta"][beta] = errors(n, beta, grid, 0, 4)[0]
        print(f"N = {n}, beta = {beta:g}: entropy_production {out['beta'][beta]['entropy_production']:.2g}, "
              f"mutual_information {out['beta'][beta]['mutual_information']:.2g}")
    n = sizes[-1]
    _, exact, single = errors(n, 10.0, jnp.array([0.0, 0.01]), 0, 4)
    out["t_0.01"] = {"entropy_production": exact[:, 1].tolist(), "error": np.abs(exact - single)[:, 1].tolist()}
    print(f"N = {n}, t = 0.01: D_iS {np.round(exact[:, 1], 9).tolist()}, float32 error "
          f"{np.abs(exact - single)[:, 1].tolist()}")
    # Late times: the phases exp(-i E t) carry eps32 |E| t, so the error grows with t.
    late = np.array([1e2, 1e3]) if args.tiny else np.array([1e2, 1e3, 1e4, 1e5, 1e6])
    n = 8 if args.tiny else 40
    late_err = {}
    for t in late:
        err = errors(n, 10.0, jnp.array([0.0, t]), 0, 1)[0]
        late_err[f"{t:g}"] = {f: err[f] for f in ("entropy_production", "mutual_information", "system_entropy")}
    out["late_times"] = {"n_levels": n, "errors": late_err}
    print(f"N = {n}, beta = 10, key 0, one realization, errors at late t: " + "; ".join(
        f"t = {t}: D_iS {v['entropy_production']:.2g}, I {v['mutual_information']:.2g}, S {v['system_entropy']:.2g}"
        for t, v in late_err.items()))
    if not args.tiny:
        path = Path(__file__).parent / "results" / "float32_precision.json"
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
