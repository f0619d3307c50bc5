"""Large-reservoir limit with ensemble averages: exact vs Redfield vs shell (Esposito-Gaspard) prediction.

Mean and standard error over many GOE realizations for several N, of <sigma_z>_t, D_iS (eq. 10) and
D_iS' (eq. 25). Also compares with Redfield at half the spectral prefactor (1/16 instead of 1/8) and,
with fewer realizations, follows the late <sigma_z> to larger N (``--extra-n-levels``) and at weaker
coupling (``--weak-coupling`` at ``--weak-n-levels``). Run (from experiments/): python large_reservoir_limit.py
"""

from __future__ import annotations

import argparse
import time

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import qep_jax


def first_disagreement(times, mean, se, prediction, n_sigma=3.0, floor=0.0, t_slip=0.0):
    """First time >= t_slip at which |mean - prediction| exceeds n_sigma SE + floor; inf if never."""
    bad = (np.abs(mean - prediction) > n_sigma * se + floor) & (times >= t_slip)
    return float(times[np.argmax(bad)]) if bad.any() else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-levels", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--delta", type=float, default=0.25)
    ap.add_argument("--coupling", type=float, default=0.2)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--realizations", type=int, default=1000)
    ap.add_argument("--t-max", type=float, default=300.0)
    ap.add_argument("--n-times", type=int, default=151)
    ap.add_argument("--tolerance", type=float, default=0.02,
                    help="absolute <sigma_z> allowance added to 3 SE when timing agreement (O(lambda^2) offsets)")
    ap.add_argument("--t-slip", type=float, default=10.0,
                    help="ignore the non-Markovian initial slip t < t_slip when timing agreement")
    ap.add_argument("--extra-n-levels", type=int, nargs="*", default=[200, 400])
    ap.add_argument("--extra-realizations", type=int, nargs="*", default=[150, 50])
    ap.add_argument("--weak-coupling", type=float, default=0.1, help="0: skip the weak-coupling run")
    ap.add_argument("--weak-n-levels", type=int, nargs="*", default=[200, 400])
    ap.add_argument("--weak-realizations", type=int, nargs="*", default=[100, 50])
    ap.add_argument("--weak-t-max", type=float, default=600.0,
                    help="the weak-coupling run relaxes 4x slower: it runs this long (301 times)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()

    times = jnp.linspace(0.0, args.t_max, args.n_times)
    t = np.asarray(times)
    key = jax.random.key(args.seed)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    data, summary = {"times": t}, {"parameters": vars(args), "per_n": {}}
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(args.n_levels)))
    for color, n in zip(colors, args.n_levels):
        model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=args.coupling, beta=args.beta)
        start = time.perf_counter()
        traj = model.simulate(jax.random.fold_in(key, n), times, args.realizations, reservoir_entropies=False)
        sz = np.asarray(traj.system_state[:, :, 1, 1].real - traj.system_state[:, :, 0, 0].real)
        d_is, d_is_open = np.asarray(traj.entropy_production), np.asarray(traj.entropy_production_open)
        elapsed = time.perf_counter() - start
        m_sz, se_sz = _common.band(axes[0], t, sz, f"exact N={n}", color=color)
        m_10, se_10 = _common.band(axes[1], t, d_is, f"exact N={n}", color=color)
        m_25, se_25 = _common.band(axes[2], t, d_is_open, f"exact N={n}", color=color)
        shell = qep_jax.shell_prediction(model, times)
        red = qep_jax.redfield_prediction(model, times)
        # The shell prediction depends on N through P_pair (the discrete levels that can give Delta).
        for ax, field in zip(axes, ("sigma_z", "entropy_production", "entropy_production_open")):
            ax.plot(t, getattr(shell, field), ":", color=color, lw=2)
        late = t >= 0.75 * args.t_max
        heisenberg = 2 * np.pi * (n - 1)
        summary["per_n"][str(n)] = {
            "seconds": elapsed,
            "level_width_over_spacing": float(2 * np.pi * args.coupling**2 / 8 * (n - 1)),
            "heisenberg_time": heisenberg,
            "shell_pair_probability": float(qep_jax.shell_pair_probability(model)),
            "sigma_z_first_time_off_redfield_3se_plus_tol": first_disagreement(
                t, m_sz, se_sz, np.asarray(red.sigma_z), floor=args.tolerance, t_slip=args.t_slip),
            "sigma_z_first_time_off_shell_3se_plus_tol": first_disagreement(
                t, m_sz, se_sz, np.asarray(shell.sigma_z), floor=args.tolerance, t_slip=args.t_slip),
            "max_abs_sigma_z_minus_redfield_t_le_1_over_gamma": float(np.max(np.abs(
                m_sz - np.asarray(red.sigma_z))[t <= 1 / float(qep_jax.redfield_rates(
                    args.delta, args.coupling, args.beta).relaxation)])),
            "late_sigma_z_exact": float(m_sz[late].mean()), "late_sigma_z_se": float(se_sz[late].mean()),
            # late_sigma_z_se above is the mean over the window of the per-time SEs; this one is the SE of
            # the per-realization late average (as in extra_runs), which includes the time correlations.
            "late_window": [float(t[late][0]), float(t[-1])],
            "late_sigma_z_se_of_late_average": float(sz[:, late].mean(axis=1).std(ddof=1) / np.sqrt(args.realizations)),
            "late_sigma_z_shell": float(np.asarray(shell.sigma_z)[late].mean()),
            "late_sigma_z_redfield": float(np.asarray(red.sigma_z)[late].mean()),
            "late_eq10_exact": float(m_10[late].mean()), "late_eq25_exact": float(m_25[late].mean()),
            "late_eq25_shell": float(np.asarray(shell.entropy_production_open)[late].mean()),
            "late_eq25_redfield": float(np.asarray(red.entropy_production_open)[late].mean()),
        }
        data.update({f"sigma_z_mean_N{n}": m_sz, f"sigma_z_se_N{n}": se_sz, f"eq10_mean_N{n}": m_10,
                     f"eq10_se_N{n}": se_10, f"eq25_mean_N{n}": m_25, f"eq25_se_N{n}": se_25,
                     f"shell_sigma_z_N{n}": shell.sigma_z, f"shell_eq10_N{n}": shell.entropy_production,
                     f"shell_eq25_N{n}": shell.entropy_production_open})
    # Extra runs: fewer realizations, sigma_z and eq. 25 only (same key scheme fold_in(key, N); the weak
    # coupling run uses fold_in(key, 100000 + N)).
    extra = [(n, r, args.coupling, n, times) for n, r in zip(args.extra_n_levels, args.extra_realizations)]
    if args.weak_coupling:
        weak_times = jnp.linspace(0.0, args.weak_t_max, 301)
        extra += [(n, r, args.weak_coupling, 100_000 + n, weak_times)
                  for n, r in zip(args.weak_n_levels, args.weak_realizations)]
    summary["extra_runs"] = {}
    t_main = t
    for n, n_real, lam, fold, times in extra:
        t = np.asarray(times)
        late = t >= 0.75 * t[-1]
        model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=lam, beta=args.beta)
        start = time.perf_counter()
        traj = model.simulate(jax.random.fold_in(key, fold), times, n_real, reservoir_entropies=False)
        sz = np.asarray(traj.system_state[:, :, 1, 1].real - traj.system_state[:, :, 0, 0].real)
        elapsed = time.perf_counter() - start
        m_sz, se_sz = _common.mean_and_se(sz)
        late_each = sz[:, late].mean(axis=1)  # per-realization late average: its SE includes time correlations
        shell_x = qep_jax.shell_prediction(model, times)
        red_x = qep_jax.redfield_prediction(model, times)
        if lam == args.coupling:
            _common.band(axes[0], t, sz, f"exact N={n} ({n_real} real.)", lw=0.8)
        summary["extra_runs"][f"lambda={lam},N={n}"] = {
            "realizations": n_real, "seconds": elapsed, "coupling": lam,
            "level_width_over_spacing": float(2 * np.pi * lam**2 / 8 * (n - 1)),
            "heisenberg_time": 2 * np.pi * (n - 1),
            "late_sigma_z_exact": float(late_each.mean()), "late_sigma_z_se": float(late_each.std(ddof=1) / np.sqrt(n_real)),
            "late_sigma_z_shell": float(np.asarray(shell_x.sigma_z)[late].mean()),
            "late_sigma_z_redfield": float(np.asarray(red_x.sigma_z)[late].mean()),
            "late_exact_minus_shell": float(late_each.mean() - np.asarray(shell_x.sigma_z)[late].mean()),
            "sigma_z_at_t10": [float(np.interp(10.0, t, m_sz)), float(np.interp(10.0, t, se_sz))],
            "t_max": float(t[-1]), "late_window": [float(t[late][0]), float(t[-1])],
            "sigma_z_at_t_max": [float(m_sz[-1]), float(se_sz[-1])],
            "shell_sigma_z_at_t_max": float(np.asarray(shell_x.sigma_z)[-1]),
        }
        data[f"sigma_z_mean_lambda{lam}_N{n}"], data[f"sigma_z_se_lambda{lam}_N{n}"] = m_sz, se_sz
        data[f"times_lambda{lam}_N{n}"] = t
    t, times = t_main, jnp.asarray(t_main)
    # The 1/8 spectral prefactor against 1/16 (half the golden-rule rates), early times.
    red16 = qep_jax.redfield_prediction(model_ref := qep_jax.SpinGORM(
        n_levels=args.n_levels[-1], delta=args.delta, coupling_strength=args.coupling, beta=args.beta),
        times, prefactor=1.0 / 16.0)
    red8 = qep_jax.redfield_prediction(model_ref, times)
    summary["prefactor_test"] = {
        f"t={tt:g}": {"exact_N" + str(args.n_levels[-1]): [float(np.interp(tt, t, data[f"sigma_z_mean_N{args.n_levels[-1]}"])),
                                                           float(np.interp(tt, t, data[f"sigma_z_se_N{args.n_levels[-1]}"]))],
                      "redfield_prefactor_1_8": float(np.interp(tt, t, red8.sigma_z)),
                      "redfield_prefactor_1_16": float(np.interp(tt, t, red16.sigma_z))}
        for tt in (4.0, 10.0, 20.0)}
    data["redfield_sigma_z_prefactor_1_16"] = red16.sigma_z
    # Redfield does not depend on N (continuum spectral density); drawn once.
    for ax, field in zip(axes, ("sigma_z", "entropy_production", "entropy_production_open")):
        ax.plot(t, getattr(red, field), "k--", label="Redfield")
        ax.set_xlabel(r"time $t$ ($\hbar/$energy)")
    axes[0].plot([], [], "k:", lw=2, label="shell (dotted, colour of its N)")
    data.update({"redfield_sigma_z": red.sigma_z, "redfield_eq25": red.entropy_production_open})
    axes[0].set_ylabel(r"$\langle\sigma_z\rangle_t$")
    axes[1].set_ylabel(r"$\Delta_i S$ eq. 10 (nats)")
    axes[2].set_ylabel(r"$\Delta_i S'$ eq. 25 (nats)")
    axes[0].legend(fontsize=8)
    fig.suptitle(rf"ensemble mean $\pm$ SE over {args.realizations} realizations for N $\leq$ {max(args.n_levels)} "
                 "(thin lines: fewer, see legend): "
                 rf"$\Delta$={args.delta}, $\beta$={args.beta}, $\lambda$={args.coupling}")
    _common.save("large_reservoir_limit", fig, data, summary, args.out_dir)


if __name__ == "__main__":
    main()
