"""Scaling in the number of realizations and in the number of time points (qep_jax only).

    python benchmarks/scaling_batch.py           # quick set
    python benchmarks/scaling_batch.py --tiny --in-process --out /tmp/b   # smoke run

Realizations: ``SpinGORM.simulate(key, times, R, reservoir_entropies=False)`` at N = 64, T = 100,
R = 1 ... 64 (time per realization should fall towards a constant as batching amortises the
dispatch). Time points: ``qep_jax.evolve`` at N = 128 for T = 10 ... 3000, cheap and full set
(cheap: O(N^3 + T N^2), so the time stays flat until T N^2 ~ N^3; full: O(T N^3)).

Batch size: ``SpinGORM.simulate(..., batch_size=b)`` with R = 16 realizations at T = 100 for
b = 1 ... 16 and the default (``batch_size=None``): cheap set at N = 64 and 200, full set at
N = 64 and 128 (the evidence for the CPU default of ``qep_jax._evolve.cpu_realization_batch``).

Ensemble runner: ``qep_jax.run_ensemble`` (the path of ``qep-jax run``) with its default chunking
at N = 64 and 200, T = 100, R = 16, 64 and 96, cheap set, next to ``SpinGORM.simulate`` with the
same R (its default batch): the runner's chunking and per-chunk work should cost little on top.

Writes ``scaling_realizations.{json,csv}``, ``scaling_times.{json,csv}``,
``scaling_batch_size.{json,csv}`` and ``scaling_runner.{json,csv}`` into ``--out``
(``--sections`` picks a subset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


SECTIONS = ("realizations", "times", "batch_size", "runner")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="N = 8, small counts, one repeat (smoke test)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per configuration")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (no memory numbers)")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which measurements to run (default: all)")
    args = parser.parse_args(argv)

    extra = {"repeats": 1} if args.tiny else {}
    if args.tiny:
        n_real, realizations, n_time, time_counts, full_counts = 8, [2], 8, [5], []
    else:
        n_real, realizations = 64, [1, 2, 4, 8, 16, 32, 64]
        n_time, time_counts, full_counts = 128, [10, 30, 100, 300, 1000, 3000], [10, 30, 100, 300, 1000]
    real_configs = [dict(route="ours-simulate", n=n_real, t=100 if not args.tiny else 5, realizations=r,
                         budget_s=args.budget, **extra) for r in realizations]
    time_configs = [dict(route="ours-cheap", n=n_time, t=t, budget_s=args.budget, **extra) for t in time_counts]
    time_configs += [dict(route="ours-full", n=n_time, t=t, budget_s=args.budget, **extra) for t in full_counts]

    if args.tiny:
        batch_sets, batch_sizes, batch_r = [(8, False), (8, True)], [1, 2, None], 2
    else:
        batch_sets, batch_sizes, batch_r = [(64, False), (200, False), (64, True), (128, True)], [1, 2, 4, 8, 16, None], 16
    batch_configs = [dict(route="ours-simulate", n=n, t=100 if not args.tiny else 5, realizations=batch_r,
                          batch_size=b, full=full, budget_s=args.budget, **extra)
                     for n, full in batch_sets for b in batch_sizes]

    if args.tiny:
        runner_sets = [(8, 4)]
    else:
        runner_sets = [(n, r) for n in (64, 200) for r in (16, 64, 96)]
    runner_configs = [dict(route=route, n=n, t=100 if not args.tiny else 5, realizations=r, budget_s=args.budget,
                           **extra) for n, r in runner_sets for route in ("ours-ensemble", "ours-simulate")]

    env = _common.environment()
    out, done = {}, set(args.sections)
    if "realizations" in done:
        out["realizations"] = _common.run_configs(real_configs, in_process=args.in_process)
        _save(args.out, "scaling_realizations", {"environment": env, "rows": out["realizations"]})
    if "batch_size" in done:
        out["batch_size"] = _common.run_configs(batch_configs, in_process=args.in_process)
        _save(args.out, "scaling_batch_size", {"environment": env, "rows": out["batch_size"]})
    if "times" in done:
        rows_t = _common.run_configs(time_configs, in_process=args.in_process)
        fits = {}
        for route in ("ours-cheap", "ours-full"):
            pts = [(r["t"], r["run_s"]) for r in rows_t if r["route"] == route and "error" not in r]
            # Slope over the largest T, where the per-time-point work dominates (cheap: -> 1 once T N^2 >> N^3).
            fits[route] = _common.fit_exponent([p[0] for p in pts], [p[1] for p in pts], 100 if not args.tiny else None)
        _save(args.out, "scaling_times", {"environment": env, "rows": rows_t, "exponents_in_t": fits})
        print("exponents in T (T >= 100):", fits)
        out.update(times=rows_t, exponents_in_t=fits)
    if "runner" in done:
        out["runner"] = _common.run_configs(runner_configs, in_process=args.in_process)
        _save(args.out, "scaling_runner", {"environment": env, "rows": out["runner"]})
    return out


def _save(directory: Path, stem: str, payload: dict) -> None:
    _common.write_json(directory / f"{stem}.json", payload)
    _common.write_table(directory / f"{stem}.csv", payload["rows"])


if __name__ == "__main__":
    main()
