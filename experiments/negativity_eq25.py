"""Negativity of eq. 25: fraction of realizations whose D_iS'(t) goes negative, over N and lambda.

A realization counts as negative if min_t D_iS'(t) < -threshold on the time grid. Eq. 10 must stay >=
-EQ10_FLOOR = -1e-10 on the same runs: the script stops with a non-zero exit status (and writes no
results) as soon as a run goes below. At a given N the realizations use the same GOE draws
(``goe(fold_in(fold_in(key, N), i), N)``) for every lambda: within one N the lambdas are compared on
common random numbers. Run: python experiments/negativity_eq25.py
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import qep_jax

EQ10_FLOOR = 1e-10  # eq. 10 is a relative entropy: anything below -EQ10_FLOOR is a bug, not rounding


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-levels", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--couplings", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=10.0)
    ap.add_argument("--realizations", type=int, default=200)
    ap.add_argument("--t-max", type=float, default=400.0)
    ap.add_argument("--n-times", type=int, default=401)
    ap.add_argument("--threshold", type=float, default=1e-8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()

    times = jnp.linspace(0.0, args.t_max, args.n_times)
    key = jax.random.key(args.seed)
    fraction = np.zeros((len(args.couplings), len(args.n_levels)))
    mean_min = np.zeros_like(fraction)
    min_eq10 = np.inf
    for i, lam in enumerate(args.couplings):
        for j, n in enumerate(args.n_levels):
            model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=lam, beta=args.beta)
            # The key depends on N only: the same GOE draws for every lambda (common random numbers).
            traj = model.simulate(jax.random.fold_in(key, n), times, args.realizations, reservoir_entropies=False)
            lowest = np.asarray(traj.entropy_production_open).min(axis=1)
            fraction[i, j] = np.mean(lowest < -args.threshold)
            mean_min[i, j] = lowest.mean()
            lowest_eq10 = float(np.asarray(traj.entropy_production).min())
            if lowest_eq10 < -EQ10_FLOOR:
                raise SystemExit(f"FAILED: eq. 10 (a relative entropy) reached {lowest_eq10:.3e} < -{EQ10_FLOOR:g} "
                                 f"at lambda={lam}, N={n}; no results written")
            min_eq10 = min(min_eq10, lowest_eq10)
            print(f"lambda={lam} N={n}: fraction negative {fraction[i, j]:.3f}", flush=True)
    se = np.sqrt(fraction * (1 - fraction) / args.realizations)  # binomial standard error

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, lam in enumerate(args.couplings):
        ax.errorbar(args.n_levels, fraction[i], yerr=se[i], marker="o", capsize=3, label=rf"$\lambda$ = {lam}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reservoir levels N")
    ax.set_ylabel(r"fraction of realizations with $\min_t \Delta_i S'(t) < 0$")
    ax.set_title(rf"eq. 25 negativity, $\Delta$={args.delta}, $\beta$={args.beta}, $t \leq$ {args.t_max:g}, "
                 f"{args.realizations} realizations")
    ax.legend()
    summary = {"parameters": vars(args), "fraction_negative": fraction.tolist(), "binomial_se": se.tolist(),
               "mean_min_eq25": mean_min.tolist(), "min_eq10_over_all_runs": min_eq10,
               "eq10_check": f"passed: min eq. 10 >= -{EQ10_FLOOR:g} in every run",
               "rows": "couplings", "columns": "n_levels"}
    _common.save("negativity_eq25", fig, {"fraction_negative": fraction, "binomial_se": se,
                                          "mean_min_eq25": mean_min, "n_levels": args.n_levels,
                                          "couplings": args.couplings}, summary, args.out_dir)


if __name__ == "__main__":
    main()
