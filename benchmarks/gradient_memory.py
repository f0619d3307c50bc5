"""Gradient memory and time vs number of time points and realizations, with and without checkpointing.

    python benchmarks/gradient_memory.py            # N = 16, a few seconds per configuration
    python benchmarks/gradient_memory.py --tiny     # smoke run

Measures ``jax.jit(jax.grad(L))`` with ``L(lambda) = mean over realizations of sum_t (D_iS(t) + I(s:r)(t))``
(cheap and expensive sets) for the spin-GORM model, realizations ``lax.map``-ped one at a time.
Two switches: ``checkpoint`` of the per-realization kernel (``_evolve_kernel(checkpoint=...)``)
and of the per-time-chunk bodies inside the derivative rules
(``qep_jax._propagator_rules.CHECKPOINT_TIME_CHUNKS``). Memory is XLA's compiled estimate of
temporary buffers (``compiled.memory_analysis().temp_size_in_bytes``), which does not depend on
machine load; times are wall-clock medians after compilation (noisy on a shared machine).
Writes ``benchmarks/results/gradient_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import qep_jax  # noqa: E402
from qep_jax import _propagator_rules  # noqa: E402
from qep_jax._evolve import _evolve_kernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_loss(n_levels, n_times, n_realizations, time_batch, checkpoint_realization):
    times = jnp.linspace(0.0, 50.0, n_times)
    key = jax.random.key(0)

    def loss(lam):
        model = qep_jax.SpinGORM(n_levels, 0.25, lam, 2.0)

        def one(i):
            x = qep_jax.goe(jax.random.fold_in(key, i), n_levels)
            traj = _evolve_kernel(model.open_system(x), times, reservoir_entropies=True,
                                  time_batch_size=time_batch, system_rank=1, rebuilt_entry=0,
                                  checkpoint=checkpoint_realization)
            return jnp.sum(traj.entropy_production) + jnp.sum(traj.mutual_information)

        return jnp.mean(jax.lax.map(one, jnp.arange(n_realizations)))

    return loss


def measure(n_levels, n_times, n_realizations, time_batch, checkpoint_realization, checkpoint_time, repeats):
    _propagator_rules.CHECKPOINT_TIME_CHUNKS = checkpoint_time
    try:
        grad = jax.jit(jax.grad(make_loss(n_levels, n_times, n_realizations, time_batch, checkpoint_realization)))
        lam = jnp.asarray(0.2)
        t0 = time.perf_counter()
        compiled = grad.lower(lam).compile()
        compile_s = time.perf_counter() - t0
        memory = compiled.memory_analysis()
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(lam))
            runs.append(time.perf_counter() - t0)
    finally:
        _propagator_rules.CHECKPOINT_TIME_CHUNKS = True
    return {
        "n_levels": n_levels, "n_times": n_times, "n_realizations": n_realizations, "time_batch": time_batch,
        "checkpoint_realization": checkpoint_realization, "checkpoint_time": checkpoint_time,
        "temp_bytes": int(memory.temp_size_in_bytes), "compile_s": compile_s,
        "run_s": sorted(runs)[len(runs) // 2],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-levels", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    n = 4 if args.tiny else args.n_levels
    time_grid = [8, 16] if args.tiny else [16, 64, 256]
    realization_grid = [1, 2] if args.tiny else [1, 4, 16]
    switches = [(True, True), (False, True), (True, False), (False, False)]
    rows = []
    for n_times in time_grid:
        for cr, ct in switches:
            rows.append(measure(n, n_times, 2, 8, cr, ct, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    for n_real in realization_grid:
        for cr, ct in switches:
            rows.append(measure(n, 32 if not args.tiny else 8, n_real, 8, cr, ct, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"device": f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}",
           "note": "temp_bytes: XLA compiled temporary-buffer estimate; run_s on a shared, loaded 2-core CPU",
           "rows": rows}
    (args.out / "gradient_memory.json").write_text(json.dumps(out, indent=1))
    print("wrote", args.out / "gradient_memory.json")


if __name__ == "__main__":
    main()
