"""Parameter inference through the exact dynamics: recover (lambda, Delta) of the spin-GORM model.

    python parameter_inference.py                  # N = 24, 16 realizations, 41 times, 300 Adam steps
    python parameter_inference.py --steps 150 --n-levels 12 --realizations 4 --refit-draw-sets 0 --name parameter_inference_quick   # quick check, ~16 s

The quick check converges (results/parameter_inference_quick.json: lambda 0.2509, Delta 0.1502, z = 0.53 / 0.14, chi^2/dof 1.23);
with 40 steps it does not (lambda 0.287, Delta 0.196, z = 15 / 23), so fewer steps are a smoke test only.

Data: the ensemble-averaged <sigma_z>(t) of ``--realizations`` GOE draws (keys ``fold_in(key, i)``)
at hidden ``(lambda, Delta)`` plus Gaussian noise of standard deviation ``--noise``. The model is the
same exact, differentiable ensemble average (same fixed GOE draws), so the only randomness to
infer through is the noise. Loss: ``sum_t (model_t - data_t)^2 / (2 sigma^2)``; optimiser
``optax.adam`` with a cosine-decayed rate on ``(lambda, Delta)``; gradients by ``jax.value_and_grad`` through
``SpinGORM.simulate`` (Daleckii-Krein rules of ``qep_jax/_propagator_rules.py``).

Uncertainties: the Gauss-Newton (Fisher) covariance ``sigma^2 (J^T J)^{-1}``, ``J = d model / d
(lambda, Delta)`` at the optimum (``jax.jacfwd``), with sigma the known noise level; also reported
with sigma re-estimated from the residuals. These cover the measurement noise only. The realization-sampling
part is measured by refitting the same data with ``--refit-draw-sets`` other sets of ``--realizations`` GOE
draws in the model (keys ``fold_in(fold_in(key, 1000 + s), i)``; Gauss-Newton from the recovered point),
i.e. as if the experimenter's reservoir were not one of the model's draws. Writes results/parameter_inference.{json,npz,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

_START = time.perf_counter()  # runtime_s in the JSON counts from here (before jax is imported)
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

import qep_jax  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-levels", type=int, default=24)
    p.add_argument("--realizations", type=int, default=16)
    p.add_argument("--beta", type=float, default=5.0, help="known inverse temperature")
    p.add_argument("--true-lambda", type=float, default=0.25)
    p.add_argument("--true-delta", type=float, default=0.15)
    p.add_argument("--start-lambda", type=float, default=0.12)
    p.add_argument("--start-delta", type=float, default=0.30)
    p.add_argument("--t-max", type=float, default=40.0)
    p.add_argument("--n-times", type=int, default=41)
    p.add_argument("--noise", type=float, default=0.01, help="std of the Gaussian noise on <sigma_z>")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--learning-rate", type=float, default=0.02, help="initial rate, cosine-decayed to 0")
    p.add_argument("--refit-draw-sets", type=int, default=8,
                   help="refit the same data with this many other sets of GOE draws (0: skip)")
    p.add_argument("--gauss-newton-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="parameter_inference")
    p.add_argument("--out-dir", default=None, help="where to write the results (default experiments/results)")
    return p.parse_args()


def main():
    wall_start = time.perf_counter()
    args = parse_args()
    key = jax.random.key(args.seed)
    times = jnp.linspace(0.0, args.t_max, args.n_times)

    def ensemble(params, draw_key=key):
        """Ensemble-mean <sigma_z>(t) and D_iS(t) ``(2, T)`` for params = (lambda, Delta)."""
        model = qep_jax.SpinGORM(args.n_levels, params[1], params[0], args.beta)
        # batch_size=1: realizations one at a time, so the gradient's memory is that of one realization.
        traj = model.simulate(draw_key, times, args.realizations, reservoir_entropies=False, batch_size=1)
        rho = traj.system_state
        sigma_z = jnp.real(rho[..., 1, 1] - rho[..., 0, 0])
        return jnp.stack([jnp.mean(sigma_z, axis=0), jnp.mean(traj.entropy_production, axis=0)])

    truth = jnp.array([args.true_lambda, args.true_delta])
    clean = ensemble(truth)
    noise_key = jax.random.fold_in(jax.random.key(args.seed + 1), 0)
    data = clean[0] + args.noise * jax.random.normal(noise_key, clean[0].shape)

    def loss(params):
        residual = ensemble(params)[0] - data
        return jnp.sum(residual**2) / (2 * args.noise**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, args.steps))
    params = jnp.array([args.start_lambda, args.start_delta])
    state = optimizer.init(params)

    t0 = time.perf_counter()
    jax.block_until_ready(value_and_grad(params))
    compile_s = time.perf_counter() - t0
    history = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        value, grad = value_and_grad(params)
        history.append([float(value), *map(float, params)])
        updates, state = optimizer.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        if step % 25 == 0:  # the loss with the parameters it was evaluated at (before this step's update)
            print(f"step {step:4d}  loss {history[-1][0]:12.4f}  lambda {history[-1][1]:.5f}  "
                  f"Delta {history[-1][2]:.5f}", flush=True)
    final_loss = float(loss(params))
    history.append([final_loss, *map(float, params)])
    optimise_s = time.perf_counter() - t0

    # Gauss-Newton / Fisher information of the Gaussian likelihood at the optimum.
    jac = jax.jacfwd(lambda p: ensemble(p)[0])(params)  # (T, 2)
    fisher = jac.T @ jac / args.noise**2
    cov = np.linalg.inv(np.asarray(fisher))
    residual = np.asarray(ensemble(params)[0] - data)
    dof = max(1, residual.size - 2)
    sigma_hat = float(np.sqrt(np.sum(residual**2) / dof))
    cov_hat = cov * (sigma_hat / args.noise) ** 2
    std, std_hat = np.sqrt(np.diag(cov)), np.sqrt(np.diag(cov_hat))
    z = (np.asarray(params) - np.asarray(truth)) / std
    fit = np.asarray(ensemble(params))
    start = np.asarray(ensemble(jnp.array([args.start_lambda, args.start_delta])))

    # Realization sampling: the same data, fitted with other sets of GOE draws in the model.
    t0 = time.perf_counter()
    model_jac = jax.jit(lambda p, k: (ensemble(p, k)[0], jax.jacfwd(lambda q: ensemble(q, k)[0])(p)))
    refits = []
    for s in range(args.refit_draw_sets):
        draw_key = jax.random.fold_in(key, 1000 + s)
        p = params
        for _ in range(args.gauss_newton_steps):
            f, j = model_jac(p, draw_key)
            p = p + jnp.linalg.solve(j.T @ j, j.T @ (data - f))
        f, _ = model_jac(p, draw_key)
        refits.append([float(p[0]), float(p[1]), float(jnp.sum((f - data) ** 2) / args.noise**2 / dof)])
        print(f"draw set {s}: lambda {refits[-1][0]:.5f} Delta {refits[-1][1]:.5f} chi2/dof {refits[-1][2]:.2f}",
              flush=True)
    refit_s = time.perf_counter() - t0
    refits = np.asarray(refits).reshape(-1, 3)

    summary = {
        "parameters": vars(args),
        "truth": {"lambda": args.true_lambda, "delta": args.true_delta},
        "recovered": {"lambda": float(params[0]), "delta": float(params[1])},
        "std_fisher": {"lambda": float(std[0]), "delta": float(std[1])},
        "std_fisher_residual_sigma": {"lambda": float(std_hat[0]), "delta": float(std_hat[1])},
        "correlation": float(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])),
        "z_scores": {"lambda": float(z[0]), "delta": float(z[1])},
        "residual_sigma": sigma_hat,
        "final_loss": final_loss,
        "chi2_per_dof": float(np.sum(residual**2) / args.noise**2 / dof),
        "degrees_of_freedom": int(dof),
        # upper-tail probability of chi^2 with dof degrees of freedom (known noise sigma)
        "chi2_p_value": float(scipy_stats.chi2.sf(np.sum(residual**2) / args.noise**2, dof)),
        "other_draw_sets": {
            "what": "same data refitted (Gauss-Newton) with other sets of GOE draws in the model",
            "lambda_delta_chi2_per_dof": refits.tolist(),
            "lambda_range": [float(refits[:, 0].min()), float(refits[:, 0].max())] if len(refits) else None,
            "delta_range": [float(refits[:, 1].min()), float(refits[:, 1].max())] if len(refits) else None,
            "chi2_per_dof_range": [float(refits[:, 2].min()), float(refits[:, 2].max())] if len(refits) else None,
            "chi2_p_values": [float(scipy_stats.chi2.sf(c * dof, dof)) for c in refits[:, 2]] if len(refits) else None,
            "sd_over_sets": {"lambda": float(refits[:, 0].std(ddof=1)), "delta": float(refits[:, 1].std(ddof=1))}
            if len(refits) > 1 else None,
            "sd_over_sets_in_fisher_sd": {"lambda": float(refits[:, 0].std(ddof=1) / std[0]),
                                          "delta": float(refits[:, 1].std(ddof=1) / std[1])} if len(refits) > 1 else None,
            "seconds": refit_s,
        },
        "compile_seconds": compile_s,
        "optimisation_seconds": optimise_s,
        "seconds_per_step": optimise_s / args.steps,
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores, jax {jax.__version__}",
    }
    out = Path(args.out_dir) if args.out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    np.savez(out / f"{args.name}.npz", times=np.asarray(times), data=np.asarray(data), clean=np.asarray(clean),
             fit=fit, start=start, history=np.asarray(history), jacobian=np.asarray(jac), covariance=cov)
    plot(args, out, np.asarray(times), np.asarray(data), np.asarray(clean), fit, start, np.asarray(history), summary)
    summary["wall_seconds"] = time.perf_counter() - wall_start  # whole script after imports, plot included
    summary["runtime_s"] = time.perf_counter() - _START  # whole script, imports included
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("recovered", "std_fisher", "z_scores", "chi2_per_dof", "other_draw_sets",
                                              "compile_seconds", "optimisation_seconds", "wall_seconds", "device")}, indent=1))


def plot(args, out, times, data, clean, fit, start, history, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.semilogy(history[:, 0] - history[:, 0].min() + 1.0)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("loss - min(loss) + 1")
    ax.set_title("loss")
    ax = axes[1]
    ax.plot(history[:, 1], history[:, 2], ".-", ms=2)
    ax.plot([args.true_lambda], [args.true_delta], "r*", ms=12, label="hidden")
    rec, std = summary["recovered"], summary["std_fisher"]
    ax.errorbar([rec["lambda"]], [rec["delta"]], xerr=[std["lambda"]], yerr=[std["delta"]], fmt="k+", label=r"recovered $\pm$ 1 sd")
    ax.set_xlabel(r"coupling $\lambda$ (energy units)")
    ax.set_ylabel(r"splitting $\Delta$ (energy units)")
    ax.set_title("optimiser path")
    ax.legend()
    ax = axes[2]
    ax.plot(times, data, "k.", label="noisy data")
    ax.plot(times, start[0], "C1--", label="start")
    ax.plot(times, fit[0], "C0-", label=r"fit $\langle\sigma_z\rangle_t$")
    ax.set_ylabel(r"$\langle\sigma_z\rangle_t$ (dimensionless)")
    ax_r = ax.twinx()
    ax_r.plot(times, fit[1], "C2-", label=r"fit $\Delta_i S$ (predicted)")
    ax_r.plot(times, clean[1], "C3:", label=r"true $\Delta_i S$")
    ax_r.set_ylabel(r"$\Delta_i S$ eq. 10 (nats)")
    ax.set_xlabel(r"time $t$ ($\hbar$/energy)")
    ax.set_title(f"N = {args.n_levels}, {args.realizations} realizations, beta = {args.beta}")
    lines = ax.get_legend_handles_labels()
    lines_r = ax_r.get_legend_handles_labels()
    ax.legend(lines[0] + lines_r[0], lines[1] + lines_r[1], fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(out / f"{args.name}.png", dpi=120)


if __name__ == "__main__":
    main()
