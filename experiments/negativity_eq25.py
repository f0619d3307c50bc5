"""Negativity of eq. 25: fraction of realizations whose D_iS'(t) goes negative, over N and lambda, and why.

A realization counts as negative if min_t D_iS'(t) < -threshold on the time grid. Eq. 10 must stay >=
-EQ10_FLOOR = -1e-10 on the same runs: the script stops with a non-zero exit status (and writes no
results) as soon as a run goes below. At a given N the realizations use the same GOE draws
(``goe(fold_in(fold_in(key, N), i), N)``) for every lambda: within one N the lambdas are compared on
common random numbers.

For the spin initially in |0>, eq. 25 is D_iS'(t) = S(rho_s(t)) - beta Delta p_up(t) (the system part of
eq. 7 with Q_s = -Delta p_up), so it is negative when rho_s(t) is purer than its excited population
allows. Per realization the script records, at the time of min_t D_iS': p_up, |rho_01|, the largest
eigenvalue of rho_s, and the realization's static transverse field lambda <R>_beta / Delta, where
<R>_beta = sum_k p_k R_kk (R = X / sqrt(8N), p_k canonical): the thermal mean of the coupling operator
that the Redfield treatment takes to be 0. Run (from experiments/): python negativity_eq25.py
"""

from __future__ import annotations

import argparse
import time

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

import qep_jax

EQ10_FLOOR = 1e-10  # eq. 10 is a relative entropy: anything below -EQ10_FLOOR is a bug, not rounding
FIELD_BINS = [0.0, 0.1, 0.2, 0.4, np.inf]  # bins of |lambda <R>_beta| / Delta


def upper_bound_95(k, n):
    """One-sided 95% Clopper-Pearson upper bound on a binomial probability after k successes in n."""
    return 1.0 if k >= n else float(stats.beta.ppf(0.95, k + 1, n - k))


def mechanism_controls(args, n, xs, times, data):
    """Eq. 25 on the same draws with parts of the coupling removed (the mechanism, causally).

    ``diag(X) = 0`` removes the static transverse field ``lambda <R>_beta`` (and every ``lambda R_kk``);
    ``offdiag(X) = 0`` keeps only the diagonal: then ``H`` is block diagonal in the reservoir levels and
    ``rho_s(t)`` is exactly the mixture, with weights ``p_k``, of a spin precessing about
    ``(Delta/2) sigma_z + lambda R_kk sigma_x`` (no spin-reservoir entanglement). Returns one entry per
    coupling with the fraction negative (threshold as in the main table) for the full coupling (from the
    main run, same draws) and for each control, and the mean and lowest ``min_t D_iS'``.
    """
    out = {}
    n_real = xs.shape[0]
    variants = {"diagonal_removed": xs - np.einsum("ikk->ik", xs)[:, :, None] * np.eye(n)[None],
                "off_diagonal_removed": np.einsum("ikk->ik", xs)[:, :, None] * np.eye(n)[None]}
    for lam in args.control_couplings:
        model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=lam, beta=args.beta)
        run = jax.jit(lambda xb, model=model: jax.lax.map(
            lambda x: qep_jax.evolve(model.open_system(x), times, reservoir_entropies=False).entropy_production_open.min(),
            xb, batch_size=8))
        full = data[f"min_eq25_lam{lam}_N{n}"][:n_real]
        entry = {"realizations": int(n_real), "full": {"fraction_negative": float(np.mean(full < -args.threshold)),
                                                       "mean_min_eq25": float(full.mean()), "lowest_min_eq25": float(full.min())}}
        for name, x in variants.items():
            lowest = np.asarray(run(jnp.asarray(x)))
            entry[name] = {"fraction_negative": float(np.mean(lowest < -args.threshold)),
                           "negative": int(np.sum(lowest < -args.threshold)),
                           "mean_min_eq25": float(lowest.mean()), "lowest_min_eq25": float(lowest.min())}
            data[f"control_{name}_min_eq25_lam{lam}_N{n}"] = lowest
        out[f"lambda={lam},N={n}"] = entry
        print(f"controls lambda={lam} N={n}: negative full {entry['full']['fraction_negative']:.3f}, "
              f"diag(X)=0 {entry['diagonal_removed']['fraction_negative']:.3f}, "
              f"offdiag(X)=0 {entry['off_diagonal_removed']['fraction_negative']:.3f}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-levels", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--couplings", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=10.0)
    ap.add_argument("--realizations", type=int, nargs="+", default=[1000, 1000, 1000, 1000, 200, 200],
                    help="realizations per N (one value: the same for every N)")
    ap.add_argument("--t-max", type=float, default=400.0)
    ap.add_argument("--n-times", type=int, default=401)
    ap.add_argument("--threshold", type=float, default=1e-8)
    ap.add_argument("--control-n-levels", type=int, nargs="*", default=[4, 8, 16, 32],
                    help="N of the mechanism controls (diag(X) = 0; off-diagonal X = 0); none: skip them")
    ap.add_argument("--control-couplings", type=float, nargs="*", default=[0.1, 0.4])
    ap.add_argument("--control-realizations", type=int, default=1000,
                    help="the first this many draws of each N (the same as in the main table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    reals = args.realizations * len(args.n_levels) if len(args.realizations) == 1 else args.realizations
    if len(reals) != len(args.n_levels):
        raise SystemExit("--realizations needs one value or one per --n-levels")

    start = time.perf_counter()
    times = jnp.linspace(0.0, args.t_max, args.n_times)
    key = jax.random.key(args.seed)
    shape = (len(args.couplings), len(args.n_levels))
    fraction, count, mean_min, upper95 = (np.zeros(shape) for _ in range(4))
    min_eq25 = np.zeros(shape)
    min_eq10 = np.inf
    per_cell, data = {}, {}
    field_sd, controls = {}, {}
    for j, (n, n_real) in enumerate(zip(args.n_levels, reals)):
        key_n = jax.random.fold_in(key, n)
        xs = np.asarray(jax.vmap(lambda i: qep_jax.goe(jax.random.fold_in(key_n, i), n))(jnp.arange(n_real)))
        e = np.linspace(-0.5, 0.5, n)
        p = np.exp(-args.beta * (e - e.min()))
        p /= p.sum()
        r_beta = np.einsum("k,ikk->i", p, xs) / np.sqrt(8 * n)  # <R>_beta per realization
        field_sd[str(n)] = {"sd_of_R_beta_over_draws": float(r_beta.std(ddof=1)),
                            "populated_levels_1_over_sum_p2": float(1.0 / np.sum(p**2))}
        for i, lam in enumerate(args.couplings):
            model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=lam, beta=args.beta)
            # The key depends on N only: the same GOE draws for every lambda (common random numbers).
            traj = model.simulate(key_n, times, n_real, reservoir_entropies=False)
            eq25 = np.asarray(traj.entropy_production_open)
            arg = eq25.argmin(axis=1)
            lowest = eq25[np.arange(n_real), arg]
            rho = np.asarray(traj.system_state)[np.arange(n_real), arg]  # rho_s at the minimum
            p_up, coh = rho[:, 1, 1].real, np.abs(rho[:, 0, 1])
            top = 0.5 + np.sqrt((p_up - 0.5) ** 2 + coh**2)
            field = np.abs(lam * r_beta) / args.delta
            neg = lowest < -args.threshold
            count[i, j] = neg.sum()
            fraction[i, j] = neg.mean()
            upper95[i, j] = upper_bound_95(int(neg.sum()), n_real)
            mean_min[i, j] = lowest.mean()
            min_eq25[i, j] = lowest.min()
            lowest_eq10 = float(np.asarray(traj.entropy_production).min())
            if lowest_eq10 < -EQ10_FLOOR:
                raise SystemExit(f"FAILED: eq. 10 (a relative entropy) reached {lowest_eq10:.3e} < -{EQ10_FLOOR:g} "
                                 f"at lambda={lam}, N={n}; no results written")
            min_eq10 = min(min_eq10, lowest_eq10)
            bins = []
            for lo, hi in zip(FIELD_BINS[:-1], FIELD_BINS[1:]):
                s = (field >= lo) & (field < hi)
                bins.append({"field_range": [lo, hi if np.isfinite(hi) else None], "realizations": int(s.sum()),
                             "negative": int(neg[s].sum()),
                             "fraction_negative": float(neg[s].mean()) if s.any() else None})
            cell = {"realizations": n_real, "negative": int(neg.sum()),
                    "max_abs_field_over_delta": float(field.max()),
                    "median_abs_field_over_delta_negative": float(np.median(field[neg])) if neg.any() else None,
                    "median_abs_field_over_delta_others": float(np.median(field[~neg])),
                    "fraction_negative_by_field_bin": bins,
                    "max_p_up_over_all_times_and_realizations": float(np.asarray(traj.system_state)[..., 1, 1].real.max())}
            if neg.any():
                cell["at_minimum_of_negative_realizations"] = {
                    "p_up_min_median_max": [float(np.min(p_up[neg])), float(np.median(p_up[neg])), float(np.max(p_up[neg]))],
                    "abs_rho01_min_median_max": [float(np.min(coh[neg])), float(np.median(coh[neg])), float(np.max(coh[neg]))],
                    "largest_eigenvalue_min_median_max": [float(np.min(top[neg])), float(np.median(top[neg])),
                                                          float(np.max(top[neg]))]}
            per_cell[f"lambda={lam},N={n}"] = cell
            tag = f"lam{lam}_N{n}"
            data.update({f"min_eq25_{tag}": lowest, f"p_up_at_min_{tag}": p_up, f"abs_rho01_at_min_{tag}": coh,
                         f"field_over_delta_{tag}": lam * r_beta / args.delta})
            print(f"lambda={lam} N={n}: {int(neg.sum())}/{n_real} negative", flush=True)
        if n in args.control_n_levels:
            controls.update(mechanism_controls(args, n, xs[: args.control_realizations], times, data))
    se = np.sqrt(fraction * (1 - fraction) / np.asarray(reals)[None, :])  # binomial standard error

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for i, lam in enumerate(args.couplings):
        ax.errorbar(args.n_levels, fraction[i], yerr=se[i], marker="o", capsize=3, label=rf"$\lambda$ = {lam}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.n_levels, [f"{n}\n({r})" for n, r in zip(args.n_levels, reals)])
    ax.minorticks_off()
    ax.set_xlabel("reservoir levels N (realizations)")
    ax.set_ylabel(rf"fraction with $\min_t \Delta_i S'(t) < -${args.threshold:g} nats")
    ax.set_title(rf"eq. 25, $\Delta$={args.delta}, $\beta$={args.beta}, $t \leq$ {args.t_max:g}; "
                 "bars: binomial SE", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    for n in args.n_levels[:3]:
        lam = args.couplings[-1]
        tag = f"lam{lam}_N{n}"
        ax.scatter(np.abs(data[f"field_over_delta_{tag}"]), data[f"min_eq25_{tag}"], s=4, alpha=0.5,
                   label=rf"N = {n}, $\lambda$ = {lam} ({reals[args.n_levels.index(n)]} realizations)")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel(r"$|\lambda \langle R\rangle_\beta| / \Delta$ (static transverse field of the realization)")
    ax.set_ylabel(r"$\min_t \Delta_i S'(t)$ (nats)")
    ax.legend(fontsize=8, markerscale=3)
    elapsed = time.perf_counter() - start
    summary = {"parameters": vars(args), "realizations_per_n": reals, "seconds": elapsed,
               "fraction_negative": fraction.tolist(), "negative_count": count.astype(int).tolist(),
               "binomial_se": se.tolist(), "upper_95_clopper_pearson": upper95.tolist(),
               "mean_min_eq25": mean_min.tolist(), "min_min_eq25": min_eq25.tolist(),
               "min_eq10_over_all_runs": min_eq10,
               "eq10_check": f"passed: min eq. 10 >= -{EQ10_FLOOR:g} in every run",
               "rows": "couplings", "columns": "n_levels", "transverse_field_spread": field_sd,
               "per_cell": per_cell, "mechanism_controls": controls}
    data.update({"fraction_negative": fraction, "binomial_se": se, "upper_95": upper95,
                 "mean_min_eq25": mean_min, "n_levels": args.n_levels, "couplings": args.couplings})
    _common.save("negativity_eq25", fig, data, summary, args.out_dir)


if __name__ == "__main__":
    main()
