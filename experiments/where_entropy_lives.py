"""Where the entropy production lives: D_iS = I(s:r) + D[rho_r(t)||rho_r^eq] (eq. 18, K = 1) over time and N.

Compares the ensemble-averaged mutual information and reservoir displacement with the shell prediction and
with the claim of Ptaszynski & Esposito, PRL 123, 200603 (2019) (mutual information bounded -- here by
2 ln 2 -- while the displacement carries the growth). Run (from experiments/): python where_entropy_lives.py

Checks recorded in the JSON: ``max_abs_identity_error`` = max |I + D - D_iS| is a consistency check only
(qep_jax builds the three fields from the same entropies and energies, so eq. 18 holds by algebra up to
rounding); the independent check is ``max_abs_dense_minus_exact``: the first ``--dense-check``
realizations at each N recomputed from the dense state rho(t) (``_common.dense_entropy_split``).
"""

from __future__ import annotations

import argparse

import _common
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import qep_jax


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-levels", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--delta", type=float, default=0.25)
    ap.add_argument("--coupling", type=float, default=0.2)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--realizations", type=int, default=100)
    ap.add_argument("--t-max", type=float, default=300.0)
    ap.add_argument("--n-times", type=int, default=41)
    ap.add_argument("--batch-size", type=int, default=10, help="realizations evaluated together")
    ap.add_argument("--dense-check", type=int, default=2,
                    help="realizations per N recomputed from the dense rho(t) as an independent check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()

    times = jnp.linspace(0.0, args.t_max, args.n_times)
    t = np.asarray(times)
    key = jax.random.key(args.seed)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(args.n_levels)))
    data, summary = {"times": t}, {"parameters": vars(args), "checks": {
        "max_abs_identity_error": "consistency check: max |I + D - D_iS|; the three fields are built from the "
                                  "same entropies and energies, so eq. 18 holds by algebra up to rounding",
        "max_abs_dense_minus_exact": "independent check: I, D and D_iS of the first dense_check realizations "
                                     "recomputed from the dense rho(t) with explicit partial traces and matrix logs",
    }, "per_n": {}}
    for color, n in zip(colors, args.n_levels):
        model = qep_jax.SpinGORM(n_levels=n, delta=args.delta, coupling_strength=args.coupling, beta=args.beta)
        key_n = jax.random.fold_in(key, n)  # realization i uses goe(fold_in(key_n, i))
        traj = model.simulate(key_n, times, args.realizations, batch_size=args.batch_size)
        mutual = np.asarray(traj.mutual_information)
        displacement = np.asarray(traj.reservoir_relative_entropy[..., 0])
        total = np.asarray(traj.entropy_production)
        m_i, se_i = _common.band(axes[0], t, mutual, f"exact N={n}", color=color)
        m_d, se_d = _common.band(axes[1], t, displacement, f"exact N={n}", color=color)
        share = displacement / np.where(total > 0, total, np.nan)
        m_share = np.nanmean(share[:, 1:], axis=0)
        se_share = np.nanstd(share[:, 1:], axis=0, ddof=1) / np.sqrt(args.realizations)
        axes[2].plot(t[1:], m_share, color=color, label=f"exact N={n}")
        axes[2].fill_between(t[1:], m_share - se_share, m_share + se_share, color=color, alpha=0.3, linewidth=0)
        shell = qep_jax.shell_prediction(model, times)
        axes[0].plot(t, shell.mutual_information, ":", color=color, lw=2)
        axes[1].plot(t, shell.reservoir_relative_entropy, ":", color=color, lw=2)
        identity = np.max(np.abs(mutual + displacement - total))  # consistency only: equal by construction
        dense_error = {"entropy_production": 0.0, "mutual_information": 0.0, "reservoir_relative_entropy": 0.0}
        for i in range(min(args.dense_check, args.realizations)):
            dense = _common.dense_entropy_split(model.open_system(qep_jax.goe(jax.random.fold_in(key_n, i), n)), t)
            for field, exact in (("entropy_production", total[i]), ("mutual_information", mutual[i]),
                                 ("reservoir_relative_entropy", displacement[i])):
                reference = dense[field][:, 0] if field == "reservoir_relative_entropy" else dense[field]
                dense_error[field] = max(dense_error[field], float(np.max(np.abs(reference - exact))))
        print(f"N={n}: eq. 18 consistency |I + D - D_iS| <= {identity:.1e}; dense rho(t) vs exact "
              f"(first {args.dense_check} realizations): max error {max(dense_error.values()):.1e}", flush=True)
        late = t >= 0.75 * args.t_max
        summary["per_n"][str(n)] = {
            "max_abs_identity_error": float(identity),
            "max_abs_dense_minus_exact": dense_error,
            "late_mutual_information": float(m_i[late].mean()), "late_mutual_information_se": float(se_i[late].mean()),
            "late_displacement": float(m_d[late].mean()), "late_displacement_se": float(se_d[late].mean()),
            "late_displacement_share": float(m_share[late[1:]].mean()),
            "late_shell_mutual_information": float(np.asarray(shell.mutual_information)[late].mean()),
            "late_shell_displacement": float(np.asarray(shell.reservoir_relative_entropy)[late].mean()),
            "max_mean_mutual_information": float(m_i.max()),
        }
        data.update({f"mutual_mean_N{n}": m_i, f"mutual_se_N{n}": se_i, f"displacement_mean_N{n}": m_d,
                     f"displacement_se_N{n}": se_d, f"displacement_share_N{n}": m_share,
                     f"shell_mutual_N{n}": shell.mutual_information,
                     f"shell_displacement_N{n}": shell.reservoir_relative_entropy})
    axes[0].set_ylabel(r"mutual information $I(s:r)$ (nats)")
    axes[1].set_ylabel(r"displacement $D[\rho_r(t)\|\rho_r^{eq}]$ (nats)")
    axes[2].set_ylabel(r"displacement / $\Delta_i S$")
    for ax in axes:
        ax.set_xlabel(r"time $t$ ($\hbar/$energy)")
    axes[0].plot([], [], "k:", lw=2, label="shell prediction")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(rf"$\Delta_i S = I + D$: mean $\pm$ SE over {args.realizations} realizations, "
                 rf"$\Delta$={args.delta}, $\beta$={args.beta}, $\lambda$={args.coupling}")
    _common.save("where_entropy_lives", fig, data, summary, args.out_dir)


if __name__ == "__main__":
    main()
