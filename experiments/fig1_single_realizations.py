"""Figure 1 of Esposito, Lindenberg & Van den Broeck (2010): single realizations, small and large N.

Eq. 10 exact, eq. 25 exact and eq. 25 from the Redfield equation, for one GOE draw per N.
Run: python experiments/fig1_single_realizations.py
"""

from __future__ import annotations

import argparse

import _common  # noqa: F401  (float64, Agg backend)
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import qep_jax


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-levels", type=int, nargs="+", default=[10, 30, 500])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--coupling", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=10.0)
    ap.add_argument("--t-max", type=float, default=400.0)
    ap.add_argument("--n-times", type=int, default=401)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-negative", type=int, default=40,
                    help="for N below 100, try up to this many draws and show the first whose eq. 25 goes "
                         "negative (0: always the first draw)")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()

    times = jnp.linspace(0.0, args.t_max, args.n_times)
    key = jax.random.key(args.seed)
    fig, axes = plt.subplots(1, len(args.n_levels), figsize=(4.2 * len(args.n_levels), 3.6), sharey=True)
    data, summary = {"times": times}, {"parameters": vars(args), "per_n": {}}
    for ax, n in zip(np.atleast_1d(axes), args.n_levels):
        model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=args.coupling, beta=args.beta)
        draws = args.search_negative if n < 100 else 0
        for draw in range(max(draws, 1)):
            x = qep_jax.goe(jax.random.fold_in(jax.random.fold_in(key, n), draw), n)
            traj = qep_jax.evolve(model.open_system(x), times, reservoir_entropies=False)
            if float(traj.entropy_production_open.min()) < -1e-6:
                break
        red = qep_jax.redfield_prediction(model, times)
        d_is, d_is_open = np.asarray(traj.entropy_production), np.asarray(traj.entropy_production_open)
        ax.plot(times, d_is, label=r"$\Delta_i S$ eq. 10 (exact)")
        ax.plot(times, d_is_open, label=r"$\Delta_i S'$ eq. 25 (exact)")
        ax.plot(times, red.entropy_production_open, "k--", label=r"$\Delta_i S'$ eq. 25 (Redfield)")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"N = {n} (draw {draw})")
        ax.set_xlabel(r"time $t$ ($\hbar/$energy)")
        data[f"entropy_production_N{n}"] = d_is
        data[f"entropy_production_open_N{n}"] = d_is_open
        data[f"redfield_open_N{n}"] = red.entropy_production_open
        after = np.asarray(times) > 20.0  # skip the initial rise when looking for near-recurrences
        summary["per_n"][str(n)] = {
            "draw": draw,
            "min_entropy_production_eq10": float(d_is.min()),
            "min_eq10_after_t20": float(d_is[after].min()),
            "min_entropy_production_eq25": float(d_is_open.min()),
            "fraction_of_times_eq25_negative": float(np.mean(d_is_open < -1e-12)),
            "max_abs_eq10_minus_redfield": float(np.max(np.abs(d_is - np.asarray(red.entropy_production_open)))),
            "max_abs_eq25_minus_redfield": float(np.max(np.abs(d_is_open - np.asarray(red.entropy_production_open)))),
            "final_eq10": float(d_is[-1]), "final_eq25": float(d_is_open[-1]),
            "final_redfield": float(red.entropy_production_open[-1]),
        }
    np.atleast_1d(axes)[0].set_ylabel("entropy production (nats, $k_B = 1$)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(rf"spin-GORM, single realizations: $\Delta$={args.delta}, $\beta$={args.beta}, $\lambda$={args.coupling}")
    _common.save("fig1_single_realizations", fig, data, summary, args.out_dir)


if __name__ == "__main__":
    main()
