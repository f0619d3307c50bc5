"""Figure 1 of Esposito, Lindenberg & Van den Broeck (2010): single realizations, small and large N.

Eq. 10 exact, eq. 25 exact and eq. 25 from the Redfield equation, for one GOE draw per N. Also records,
at the minimum of eq. 25, the spin state (p_up, |rho_01|, largest eigenvalue), the excited population at
t_max against Redfield and the shell prediction, and (``--recurrence-draws``) how deep eq. 10 comes back
towards 0 after t = 20 over many draws at small N (near-recurrences).
Run (from experiments/): python fig1_single_realizations.py
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
    ap.add_argument("--n-levels", type=int, nargs="+", default=[4, 10, 30, 500])
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--coupling", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=10.0)
    ap.add_argument("--t-max", type=float, default=400.0)
    ap.add_argument("--n-times", type=int, default=401)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-negative", type=int, default=40,
                    help="for N below 100, try up to this many draws and show the first whose eq. 25 goes "
                         "negative (0: always the first draw)")
    ap.add_argument("--recurrence-draws", type=int, default=200,
                    help="draws per N for the near-recurrence statistics of eq. 10 (0: skip)")
    ap.add_argument("--recurrence-n-levels", type=int, nargs="+", default=[4, 6, 10])
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
        shell = qep_jax.shell_prediction(model, times)
        rho_s = np.asarray(traj.system_state)
        p_up, coh = rho_s[:, 1, 1].real, np.abs(rho_s[:, 0, 1])
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
        i_min = int(np.argmin(np.asarray(traj.entropy_production_open)))
        data[f"p_up_N{n}"], data[f"abs_rho01_N{n}"] = p_up, coh
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
            "at_min_eq25": {"time": float(times[i_min]), "p_up": float(p_up[i_min]), "abs_rho01": float(coh[i_min]),
                            "largest_eigenvalue": float(0.5 + np.hypot(p_up[i_min] - 0.5, coh[i_min]))},
            "max_p_up": float(p_up.max()),
            "final_p_up_exact": float(p_up[-1]), "final_p_up_redfield": float(red.excited_population[-1]),
            "final_p_up_shell": float(shell.excited_population[-1]),
        }
    if args.recurrence_draws:
        summary["recurrences_eq10_after_t20"] = {}
        for n in args.recurrence_n_levels:
            model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=args.coupling, beta=args.beta)
            ens = model.simulate(jax.random.fold_in(key, 10_000 + n), times, args.recurrence_draws,
                                 reservoir_entropies=False)
            low = np.asarray(ens.entropy_production)[:, np.asarray(times) > 20.0].min(axis=1)
            summary["recurrences_eq10_after_t20"][str(n)] = {
                "draws": args.recurrence_draws, "median_min": float(np.median(low)),
                "fraction_min_below_0.02": float(np.mean(low < 0.02)),
                "fraction_min_below_0.05": float(np.mean(low < 0.05))}
            data[f"recurrence_min_eq10_N{n}"] = low
    np.atleast_1d(axes)[0].set_ylabel("entropy production (nats, $k_B = 1$)")
    # One legend below the panels (inside the N = 4 panel it covered the curves); the title above the
    # panel titles (bbox_inches="tight" in _common.save keeps both in the file).
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9)
    fig.suptitle(rf"spin-GORM, single realizations: $\Delta$={args.delta}, $\beta$={args.beta}, "
                 rf"$\lambda$={args.coupling}", y=1.03)
    _common.save("fig1_single_realizations", fig, data, summary, args.out_dir)


if __name__ == "__main__":
    main()
