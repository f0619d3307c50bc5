"""GPU target benchmark: many realizations of spin-GORM, cheap set, float64, with FLOP/s vs peak.

    python benchmarks/gpu_bench.py                       # 1024 realizations, N = 1024, T = 128 (needs a GPU)
    python benchmarks/gpu_bench.py --dry-run --out /tmp/g   # tiny sizes on whatever device (CPU ok)

Records the device, jax / jaxlib / CUDA plugin versions, the dtype actually used, and which eigh
kernel XLA calls (the ``custom_call_target`` names in the compiled HLO of the batched
diagonalization that is timed, and of a single matrix), then times:

* ``diagonalization``: GOE sampling + Hamiltonian + ``qep_jax.diagonalize`` for every realization,
  batched exactly as ``SpinGORM.simulate`` batches (``lax.map`` with ``batch_size``);
* ``cheap set``: ``SpinGORM.simulate(..., reservoir_entropies=False)``;
* ``eigh_paths``: every implementation ``jax.lax.linalg.eigh`` offers (the platform's default,
  ``QR``, ``JACOBI``) on the first ``--eigh-paths`` realizations' Hamiltonians, with the accuracy
  of each result, so the run also says whether another kernel would diagonalize faster.

The post-diagonalization work (basis changes + time points) is ``cheap - diagonalization``; the
time-point work alone is the difference of two cheap-set runs of ``--rate-realizations``
realizations, at ``T`` and at 2 time points. FLOPs are counted analytically per realization
(``D = 2N``):

* eigh with eigenvectors: ``10/3 D^3``, LAPACK's divide and conquer without its merges (tridiagonal
  reduction ``4/3 D^3``, back-transformation ``2 D^3``; the merges add at most ``4/3 D^3``, fewer
  with deflation), so the rate is a lower estimate;
* basis changes: ``5 D^3`` (``W_0^T W_0`` and ``W_0^T W_1`` for the two independent entries of
  ``rho_s``, ``D^3`` each; ``W^T rho0 W = C C^T`` from the pure-spin factor, ``D^3``;
  ``W^T diag(h_r) W``, ``2 D^3``; SpinGORM's reservoirs are diagonal, so no reservoir ``eigh``);
* time points: ``12 D^2`` each (three ``D x D`` weight matrices times the cos and sin vectors).

``xla_flops_per_realization`` cross-checks the last two: XLA's own count (``cost_analysis``) of
one realization's compiled cheap set, which leaves out the ``eigh`` custom call.

Achieved TFLOP/s are reported with the FP64 peak of the device (tensor cores, vector units) and
their ratio, the fraction of peak. Writes ``gpu.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

# FP64 peak (dense, TFLOP/s) by device_kind substring: (tensor-core FP64, FP64 vector units).
# NVIDIA data sheets; the eigensolvers mostly run on the vector units, GEMMs can use tensor cores.
# Checked in order, most specific first: "NVIDIA H100 NVL" must not fall through to the SXM entry.
FP64_PEAK_TFLOPS = (
    ("H200 NVL", (60.0, 30.0)),
    ("H200", (67.0, 34.0)),  # SXM
    ("H100 NVL", (60.0, 30.0)),
    ("H100 PCIe", (51.0, 26.0)),
    ("H100", (67.0, 34.0)),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("A100", (19.5, 9.7)),
    ("V100-PCIE", (7.0, 7.0)),
    ("V100", (7.8, 7.8)),  # SXM2
)


def peak_for(kind: str):
    for key, value in FP64_PEAK_TFLOPS:
        if key in kind:
            return value
    return None


def versions() -> dict:
    import jax
    import jaxlib

    out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    for dist in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
                 "nvidia-cusolver-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        out["environment_info"] = jax.print_environment_info(return_string=True)
    except Exception as exc:  # noqa: BLE001 (diagnostic only)
        out["environment_info"] = f"unavailable: {exc}"
    return out


def custom_calls(compiled_text: str) -> list[str]:
    """``custom_call_target`` names in compiled HLO text."""
    return sorted(set(re.findall(r'custom_call_target="([^"]+)"', compiled_text)))


def single_eigh_kernels(d: int) -> list[str]:
    """``custom_call_target`` names of a single float64 ``diagonalize`` (no batch)."""
    import jax
    import jax.numpy as jnp

    import qep_jax

    spec = jax.ShapeDtypeStruct((d, d), jnp.float64)
    return custom_calls(jax.jit(qep_jax.diagonalize).lower(spec).compile().as_text())


# The eigh implementations jax.lax.linalg.eigh offers (None: XLA's default for the platform, the
# kernel qep_jax uses off the CPU). Timed side by side so the one GPU run also says whether another
# kernel would serve the target better.
EIGH_PATHS = ("default", "QR", "JACOBI")


def eigh_paths(hamiltonians, repeats: int) -> dict:
    """Each :data:`EIGH_PATHS` entry on the same batch of Hamiltonians ``(k, D, D)``.

    Per path: ``run_s_per_matrix``, ``first_s``, the ``custom_call_target`` names, and the float64
    accuracy of the result: ``residual`` = max ``|H W - W diag(E)|`` / max ``|E|`` and
    ``orthogonality`` = max ``|W^T W - 1|``. A path the platform does not offer records ``error``.
    """
    import jax
    import jax.numpy as jnp
    from jax.lax import linalg

    k, d = hamiltonians.shape[0], hamiltonians.shape[-1]
    out = {}
    for name in EIGH_PATHS:
        impl = None if name == "default" else linalg.EighImplementation[name]
        fn = jax.jit(jax.vmap(lambda h, impl=impl: linalg.eigh(h, implementation=impl)))
        try:
            kernels = custom_calls(fn.lower(hamiltonians).compile().as_text())
        except Exception as exc:  # noqa: BLE001 (e.g. JACOBI is not offered on the CPU)
            out[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            continue
        (w, e), timing = _common.time_call(lambda fn=fn: fn(hamiltonians), repeats=repeats)
        scale = jnp.max(jnp.abs(e))
        residual = jnp.max(jnp.abs(hamiltonians @ w - w * e[:, None, :])) / scale
        orthogonality = jnp.max(jnp.abs(jnp.swapaxes(w, -1, -2) @ w - jnp.eye(d, dtype=w.dtype)))
        out[name] = {"kernels": kernels, "matrices": k, "run_s_per_matrix": timing["run_s"] / k,
                     "first_s": timing["first_s"], "residual": float(residual),
                     "orthogonality": float(orthogonality)}
    return out


def flops(n: int, n_times: int) -> dict:
    d = 2 * n
    # See the module docstring. Time points: 3 series x (cos, sin) x 2 D^2 each.
    return {"diagonalization": 10.0 / 3.0 * d**3, "basis_changes": 5.0 * d**3,
            "time_points": 12.0 * d**2 * n_times}


def xla_flops(model, times) -> float | None:
    """XLA's FLOP count of one realization's compiled cheap set (the eigh custom call not included)."""
    import jax

    import qep_jax
    from qep_jax._evolve import _evolve_kernel

    def one(x):
        return _evolve_kernel(model.open_system(x), times, reservoir_entropies=False,
                              time_batch_size=times.shape[0], system_rank=1, rebuilt_entry=0)

    try:
        cost = jax.jit(one).lower(qep_jax.goe(jax.random.key(0), model.n_levels)).compile().cost_analysis()
    except Exception:  # noqa: BLE001 (diagnostic only; not every backend reports costs)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--realizations", type=int, default=1024)
    parser.add_argument("--t", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="realizations per batch (default: memory)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rate-realizations", type=int, default=64, metavar="K",
                        help="realizations of the two runs whose difference times the time-point work (0: skip)")
    parser.add_argument("--eigh-paths", type=int, default=4, metavar="K",
                        help="realizations on which every eigh implementation is timed (0: skip)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, allowed without a GPU")
    parser.add_argument("--out", type=Path, default=_common.RESULTS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.n, args.realizations, args.t = 8, 2, 5
        args.eigh_paths = min(args.eigh_paths, 2)

    import jax
    import jax.numpy as jnp

    import qep_jax
    from qep_jax._spectral import diagonalize
    from qep_jax.models._spin_gorm import N_SERIES

    _common.enable_x64()
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.dry_run:
        print(f"gpu_bench: no GPU found (default device: {device}); nothing run. "
              "Use --dry-run to exercise the script on CPU.", file=sys.stderr)
        raise SystemExit(2)

    n, r, t = args.n, args.realizations, args.t
    d = 2 * n
    model = qep_jax.SpinGORM(n_levels=n, delta=_common.DELTA, coupling_strength=_common.COUPLING, beta=_common.BETA)
    key = jax.random.key(_common.SEED)
    times = jnp.linspace(0.0, _common.T_END, t)
    stats = device.memory_stats() or {}
    budget = int(0.5 * stats["bytes_limit"]) if "bytes_limit" in stats else 2 * 2**30
    per = qep_jax._evolve.realization_bytes((2, n), t, system_rank=1, n_observables=N_SERIES, itemsize=8,
                                            reservoir_entropies=False, time_batch_size=t)
    batch = args.batch_size or int(max(1, min(r, budget // per)))

    @jax.jit
    def diagonalize_all(key):
        def one(i):
            x = qep_jax.goe(jax.random.fold_in(key, i), n)
            spec = diagonalize(model.open_system(x).hamiltonian())
            return spec.energies, spec.vectors[0]  # keep the eigenvectors live

        return jax.lax.map(one, jnp.arange(r), batch_size=batch)

    def simulate():
        return model.simulate(key, times, r, reservoir_entropies=False, batch_size=batch, memory_budget=budget)

    # The kernels of the path that is timed: the batched diagonalization below, batched as
    # SpinGORM.simulate batches (lax.map with batch_size). On the CPU qep_jax sends a batch of eighs
    # through a host callback (qep_jax/_linalg.py), so this names the callback, not LAPACK; a single
    # matrix keeps XLA's own kernel (lapack_dsyevd_ffi on CPU), recorded next to it.
    record = {"device": str(device), "device_kind": device.device_kind, "platform": device.platform,
              "versions": versions(), "n": n, "d": d, "realizations": r, "t": t, "batch_size": batch,
              "memory_budget_bytes": budget, "dry_run": args.dry_run,
              "eigh_custom_calls": custom_calls(diagonalize_all.lower(key).compile().as_text()),
              "eigh_custom_calls_single_matrix": single_eigh_kernels(d)}
    print("device:", record["device_kind"], "| eigh kernels (batched, as timed):", record["eigh_custom_calls"],
          "| single matrix:", record["eigh_custom_calls_single_matrix"], "| batch", batch)
    _, record["diagonalization"] = _common.time_call(lambda: diagonalize_all(key), repeats=args.repeats)
    traj, record["cheap_set"] = _common.time_call(simulate, repeats=args.repeats)
    record["finite"] = bool(jnp.all(jnp.isfinite(traj.entropy_production)))
    # The precision actually used (float64 needs jax_enable_x64; without it JAX silently runs float32).
    record["dtype"] = {"hamiltonian": str(model.open_system(qep_jax.goe(key, n)).hamiltonian().dtype),
                       "entropy_production": str(traj.entropy_production.dtype),
                       "jax_enable_x64": bool(jax.config.jax_enable_x64)}
    f = flops(n, t)
    record["xla_flops_per_realization"] = xla_flops(model, times)
    time_points_rate = None
    if args.rate_realizations > 0 and t > 2:
        k = min(args.rate_realizations, r)

        def cheap_run(n_times):
            grid = jnp.linspace(0.0, _common.T_END, n_times)
            return lambda: model.simulate(key, grid, k, reservoir_entropies=False, batch_size=min(batch, k),
                                          memory_budget=budget)

        _, at_t = _common.time_call(cheap_run(t), repeats=args.repeats)
        _, at_2 = _common.time_call(cheap_run(2), repeats=args.repeats)
        dt = at_t["run_s"] - at_2["run_s"]
        record["time_points_runs"] = {"realizations": k, "at_t": at_t, "at_2_times": at_2}
        # The difference of two timings: not resolvable when it is within their noise.
        time_points_rate = k * 12.0 * d**2 * (t - 2) / dt / 1e12 if dt > 0.05 * at_t["run_s"] else None
    t_diag = record["diagonalization"]["run_s"]
    t_cheap = record["cheap_set"]["run_s"]
    t_rest = t_cheap - t_diag
    record["flops_per_realization"] = f
    record["achieved_tflops"] = {
        "diagonalization": r * f["diagonalization"] / t_diag / 1e12,
        # The difference of two timings: not resolvable when it is within their noise.
        "basis_changes_and_time_points": (r * (f["basis_changes"] + f["time_points"]) / t_rest / 1e12
                                          if t_rest > 0.05 * t_cheap else None),
        "time_points": time_points_rate,
        "cheap_set_total": r * sum(f.values()) / t_cheap / 1e12,
    }
    peak = peak_for(device.device_kind)
    record["peak_fp64_tflops_tensor_vector"] = peak
    # Achieved / peak for each rate, against the tensor-core and the vector-unit FP64 peak
    # (None: the device is not in FP64_PEAK_TFLOPS, or the rate is not resolvable).
    record["fraction_of_peak_tensor_vector"] = {
        k: (None if v is None or peak is None else [v / peak[0], v / peak[1]])
        for k, v in record["achieved_tflops"].items()}
    record["target_met_60s"] = record["cheap_set"]["run_s"] < 60.0
    fraction = record["fraction_of_peak_tensor_vector"]
    print(f"diagonalization {t_diag:.3f} s ({record['achieved_tflops']['diagonalization']:.3g} TFLOP/s), "
          f"cheap set {record['cheap_set']['run_s']:.3f} s (first call {record['cheap_set']['first_s']:.3f} s), "
          f"post-diagonalization {record['achieved_tflops']['basis_changes_and_time_points']} TFLOP/s, "
          f"time points {record['achieved_tflops']['time_points']} TFLOP/s, "
          f"peak FP64 (tensor, vector) {peak}, fraction of peak (tensor, vector) {fraction}, "
          f"dtype {record['dtype']}")
    if args.eigh_paths > 0:
        hs = jnp.stack([model.open_system(qep_jax.goe(jax.random.fold_in(key, i), n)).hamiltonian()
                        for i in range(min(args.eigh_paths, r))])
        record["eigh_paths"] = eigh_paths(hs, args.repeats)
        for name, path in record["eigh_paths"].items():
            print(f"eigh {name}: " + (path["error"] if "error" in path else
                  f"{1e3 * path['run_s_per_matrix']:.3f} ms per matrix, kernels {path['kernels']}, "
                  f"residual {path['residual']:.2e}, orthogonality {path['orthogonality']:.2e}"))
    _common.write_json(args.out / ("gpu_dry_run.json" if args.dry_run else "gpu.json"), record)
    return record


if __name__ == "__main__":
    main()
