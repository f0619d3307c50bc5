"""Small helpers shared by the experiment scripts (float64, statistics, output files)."""

from __future__ import annotations

import json
import os
import pathlib
import time

START = time.perf_counter()  # the script's run time (``runtime_s`` in its JSON) counts from this import

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def mean_and_se(samples, axis=0):
    """Mean and standard error of the mean along ``axis`` (ddof = 1)."""
    x = np.asarray(samples)
    n = x.shape[axis]
    return x.mean(axis), x.std(axis, ddof=1) / np.sqrt(n)


def band(ax, t, samples, label, color=None, **kw):
    """Plot the mean with a +-1 standard-error band; returns (mean, se)."""
    m, s = mean_and_se(samples)
    (line,) = ax.plot(t, m, label=label, color=color, **kw)
    ax.fill_between(t, m - s, m + s, color=line.get_color(), alpha=0.3, linewidth=0)
    return m, s


def save(name: str, fig, data: dict, summary: dict, out_dir=None) -> pathlib.Path:
    """Write ``name.png``, ``name.npz`` (arrays) and ``name.json`` (summary numbers, parameters).

    The JSON gets ``runtime_s``: wall seconds from the import of this module (before jax and qep_jax
    are imported) to the moment the JSON is written, figure and arrays included.
    """
    out = pathlib.Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    np.savez_compressed(out / f"{name}.npz", **{k: np.asarray(v) for k, v in data.items()})
    summary = {**summary, "runtime_s": time.perf_counter() - START}
    with open(out / f"{name}.json", "w") as f:
        json.dump(summary, f, indent=2, default=float)
    print(json.dumps(summary, indent=2, default=float))
    return out


def _entropy(rho):
    w = np.clip(np.linalg.eigvalsh(rho), 0.0, None)
    w = w[w > 0]
    return float(-np.sum(w * np.log(w)))


def _relative_entropy(rho, sigma, floor=1e-300):
    """``Tr rho (ln rho - ln sigma)`` with matrix logarithms from ``eigh``."""
    w, v = np.linalg.eigh(sigma)
    log_sigma = (v * np.log(np.clip(w, floor, None))) @ v.conj().T
    return -_entropy(rho) - float(np.real(np.trace(rho @ log_sigma)))


def dense_entropy_split(system, times):
    """Eq. 10 and its eq. 18 split from the dense state ``rho(t) = U rho(0) U^dagger`` (numpy only).

    Independent of how ``qep_jax.evolve`` computes these fields: here ``rho(t)`` of the whole
    ``(D, D)`` space is formed, partial traces are taken explicitly, ``S(rho(t))`` is computed rather
    than taken constant, and every relative entropy uses matrix logarithms. For small ``D`` only.

    Args:
        system: a single (unbatched) :class:`qep_jax.OpenSystem` without number operators.
        times: ``(T,)``.

    Returns:
        dict of numpy arrays: ``entropy_production`` ``(T,)`` = ``D[rho(t) || rho_s(t) (x) prod_r rho_r^eq]``,
        ``mutual_information`` ``(T,)`` = ``D[rho(t) || rho_s(t) (x) rho_R(t)]``, ``reservoir_relative_entropy``
        ``(T, K)`` = ``D[rho_r(t) || rho_r^eq]``, and for ``K > 1`` ``inter_reservoir_correlation`` ``(T,)``.
    """
    dims = (system.system_dim,) + tuple(system.reservoir_dims)
    k = len(dims) - 1
    gibbs = []
    for h_r, beta in zip(system.h_reservoirs, np.asarray(system.betas)):
        w, v = np.linalg.eigh(np.asarray(h_r))
        p = np.exp(-beta * (w - w.min()))
        gibbs.append((v * (p / p.sum())) @ v.conj().T)
    rho_eq = gibbs[0]
    for g in gibbs[1:]:
        rho_eq = np.kron(rho_eq, g)
    rho0 = np.kron(np.asarray(system.rho_system), rho_eq)
    energies, modes = np.linalg.eigh(np.asarray(system.hamiltonian()))
    rho0_eig = modes.conj().T @ rho0 @ modes
    d_s, d_res = dims[0], int(np.prod(dims[1:]))
    out = {"entropy_production": [], "mutual_information": [], "reservoir_relative_entropy": [],
           "inter_reservoir_correlation": []}
    for t in np.asarray(times):
        phase = np.exp(-1j * energies * t)
        rho = modes @ (phase[:, None] * rho0_eig * phase.conj()[None, :]) @ modes.conj().T
        blocks = rho.reshape(d_s, d_res, d_s, d_res)
        rho_s = np.einsum("iaja->ij", blocks)
        rho_res = np.einsum("iaib->ab", blocks)  # (d_res, d_res), all reservoirs together
        out["entropy_production"].append(_relative_entropy(rho, np.kron(rho_s, rho_eq)))
        out["mutual_information"].append(_relative_entropy(rho, np.kron(rho_s, rho_res)))
        tensor = rho_res.reshape(dims[1:] * 2)
        singles = []
        for r in range(k):
            # Trace out every reservoir but r: move r's two axes to the front, then trace the rest.
            rest = [q for q in range(k) if q != r]
            moved = np.transpose(tensor, [r, k + r] + rest + [k + q for q in rest])
            traced = "".join(chr(ord("c") + q) for q in range(len(rest)))
            singles.append(np.einsum(f"ab{traced}{traced}->ab", moved))
        out["reservoir_relative_entropy"].append([_relative_entropy(x, g) for x, g in zip(singles, gibbs)])
        if k > 1:
            product = singles[0]
            for x in singles[1:]:
                product = np.kron(product, x)
            out["inter_reservoir_correlation"].append(_relative_entropy(rho_res, product))
    return {name: np.asarray(v) for name, v in out.items() if v}
