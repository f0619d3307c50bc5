"""Relative precision near t = 0 against a 50-digit reference: the numbers of README "Changes since t = 0".

    python benchmarks/short_time_precision.py          # about a minute on 2 CPU cores (needs mpmath)
    python benchmarks/short_time_precision.py --tiny   # smoke run

One spin-GORM realization, ``SpinGORM(N, 0.1, 0.1, beta)`` with ``X = goe(key(3), N)``, the spin
starting pure in ``|0>``. The reference diagonalizes H in mpmath at 50 digits, builds rho(t) and
rho_s(t) there and takes ``S(rho_s(t))`` and ``D_iS = S(rho_s(t)) + beta (<H_r>_t - <H_r>_0)``
(eq. 10 for a pure rho_s(0)) without any cancellation at working precision. For each beta and time
it prints the relative error of qep_jax's ``system_entropy`` and ``entropy_production`` in float64,
and in float32 (the same matrix rounded), and writes ``benchmarks/results/short_time_precision.json``.
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

import numpy as np  # noqa: E402

import qep_jax  # noqa: E402


def reference(system: qep_jax.OpenSystem, times, beta: float, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S(rho_s(t)), D_iS(t))`` ``(T,)`` each, from an mpmath evolution at ``digits`` digits."""
    import mpmath as mp

    mp.mp.dps = digits
    h = np.asarray(system.hamiltonian())
    e_r = np.diag(np.asarray(system.h_reservoirs[0]))
    rho_s0 = np.asarray(system.rho_system)
    n, dim = len(e_r), h.shape[0]
    energies, vectors = mp.eigsy(mp.matrix(h.tolist()))
    weights = [mp.exp(-beta * mp.mpf(float(e))) for e in e_r]
    weights = [w / sum(weights) for w in weights]
    rho0 = mp.zeros(dim, dim)
    for a in range(2):
        for b in range(2):
            for i in range(n):
                rho0[a * n + i, b * n + i] = mp.mpf(float(rho_s0[a, b].real)) * weights[i]
    start = vectors.T * rho0 * vectors
    energy0 = sum(rho0[k, k] * mp.mpf(float(e_r[k % n])) for k in range(dim))
    entropy, production = [], []
    for t in times:
        phase = [mp.expjpi(-energies[k] * mp.mpf(float(t)) / mp.pi) for k in range(dim)]
        evolved = mp.matrix(dim, dim)
        for a in range(dim):
            for b in range(dim):
                evolved[a, b] = start[a, b] * phase[a] * mp.conj(phase[b])
        rho = vectors * evolved * vectors.T
        reduced = mp.matrix(2, 2)
        for a in range(2):
            for b in range(2):
                reduced[a, b] = sum(rho[a * n + i, b * n + i] for i in range(n))
        eigenvalues = mp.eighe(reduced)[0]
        s = -sum(p * mp.log(p) for p in (mp.re(x) for x in eigenvalues) if p > 0)
        energy = sum(mp.re(rho[k, k]) * mp.mpf(float(e_r[k % n])) for k in range(dim))
        entropy.append(float(s))
        production.append(float(s + beta * (energy - mp.re(energy0))))
    return np.array(entropy), np.array(production)


def relative(value, ref) -> list:
    value = np.asarray(value, float)
    return [float(abs(v - r) / abs(r)) if r != 0 else float(abs(v)) for v, r in zip(value, ref)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    n, betas, digits = (3, (10.0,), 30) if args.tiny else (6, (10.0, 1e4), 50)
    times = np.array([1e-7, 1e-5]) if args.tiny else np.array([1e-8, 1e-7, 1e-6, 1e-5, 1e-3, 1e-1, 10.0])
    x = np.asarray(qep_jax.goe(jax.random.key(3), n))
    out = {"n_levels": n, "key": 3, "digits": digits, "times": times.tolist(), "beta": {}}
    for beta in betas:
        row = {}
        s_ref, d_ref = reference(qep_jax.SpinGORM(n, 0.1, 0.1, beta).open_system(x), times, beta, digits)
        for name, dtype in (("float64", np.float64), ("float32", np.float32)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the float32 warning is the point here
                model = qep_jax.SpinGORM(n, dtype(0.1), dtype(0.1), dtype(beta))
                traj = qep_jax.evolve(model.open_system(x.astype(dtype)), times, reservoir_entropies=False)
            row[name] = {"system_entropy": relative(traj.system_entropy, s_ref),
                         "entropy_production": relative(traj.entropy_production, d_ref)}
        row["reference"] = {"system_entropy": s_ref.tolist(), "entropy_production": d_ref.tolist()}
        out["beta"][str(beta)] = row
        print(f"beta = {beta:g}, N = {n}: relative errors against {digits} digits")
        print("  t        S_ref     D_ref     S f64     D f64     S f32     D f32")
        for k, t in enumerate(times):
            cells = [row[p][q][k] for p in ("float64", "float32") for q in ("system_entropy", "entropy_production")]
            print(f"  {t:<8.0e} {s_ref[k]:<9.2e} {d_ref[k]:<9.2e} " + " ".join(f"{c:<9.1e}" for c in cells))
    if not args.tiny:
        path = Path(__file__).parent / "results" / "short_time_precision.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
