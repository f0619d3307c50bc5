"""Independent dense NumPy/SciPy reference: rho(t) = U rho0 U^dag with U = expm(-iHt) at every time point.

Nothing here uses qep_jax: the total state is formed explicitly, reduced states are taken with
reshapes, entropies from eigenvalues and relative entropies from matrix logarithms.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg


def random_hermitian(rng, n, *, real=False, scale=1.0):
    a = rng.normal(size=(n, n))
    if not real:
        a = a + 1j * rng.normal(size=(n, n))
    return scale * (a + a.conj().T) / 2


def random_density_matrix(rng, n, *, pure=False, real=False):
    if pure:
        psi = rng.normal(size=n) + (0 if real else 1j * rng.normal(size=n))
        psi = psi / np.linalg.norm(psi)
        return np.outer(psi, psi.conj())
    a = rng.normal(size=(n, n)) + (0 if real else 1j * rng.normal(size=(n, n)))
    rho = a @ a.conj().T
    return rho / np.trace(rho)


def kron_all(mats):
    out = mats[0]
    for m in mats[1:]:
        out = np.kron(out, m)
    return out


def embed(op, dims, factor):
    mats = [np.eye(d) for d in dims]
    mats[factor] = op
    return kron_all(mats)


def reduced(rho, dims, keep):
    """Partial trace by explicit index loops over the traced subsystems (keep: sorted tuple)."""
    n = len(dims)
    tensor = rho.reshape(tuple(dims) * 2)
    for i in reversed(range(n)):
        if i in keep:
            continue
        m = tensor.ndim // 2
        tensor = np.trace(tensor, axis1=i, axis2=i + m)
    d = math.prod(dims[k] for k in keep)
    return tensor.reshape(d, d)


def entropy(rho):
    lam = np.linalg.eigvalsh((rho + rho.conj().T) / 2)
    lam = lam[lam > 1e-300]
    return float(-np.sum(lam * np.log(lam)))


def log_psd(sigma, floor=1e-14):
    """ln sigma on its support; the kernel is mapped to 0 (callers check rho has no weight there)."""
    lam, w = np.linalg.eigh((sigma + sigma.conj().T) / 2)
    logs = np.where(lam > floor, np.log(np.where(lam > floor, lam, 1.0)), 0.0)
    return (w * logs) @ w.conj().T


def relative_entropy(rho, sigma):
    return float(np.real(-entropy(rho) - np.trace(rho @ log_psd(sigma))))


def gibbs(h, beta):
    g = scipy.linalg.expm(-beta * h)
    return g / np.trace(g)


def dense_reference(h_s, h_rs, betas, coupling, rho_s0, times, *, mus=None, number_ops=None):
    """Every Trajectory field from the dense state at each time. Returns a dict of arrays."""
    dims = (h_s.shape[0],) + tuple(h.shape[0] for h in h_rs)
    n_res = len(h_rs)
    mus = np.zeros(n_res) if mus is None else np.asarray(mus)
    grand = [h - (mu * n if number_ops is not None else 0) for h, mu, n in
             zip(h_rs, mus, number_ops if number_ops is not None else [None] * n_res)]
    h = embed(h_s, dims, 0) + coupling + sum(embed(hr, dims, r + 1) for r, hr in enumerate(h_rs))
    rho_eqs = [gibbs(g, b) for g, b in zip(grand, betas)]
    rho0 = kron_all([rho_s0] + rho_eqs)
    rho_s_eq = gibbs(h_s, betas[0])
    out = {k: [] for k in (
        "system_state", "system_entropy", "system_energy", "interaction_energy", "reservoir_energy",
        "reservoir_particle_number", "heat", "entropy_flow", "entropy_production",
        "entropy_production_balance", "entropy_production_open", "total_entropy_t", "reservoir_entropy",
        "mutual_information", "correlation_entropy", "reservoir_relative_entropy",
        "inter_reservoir_correlation")}
    grand0 = np.array([np.real(np.trace(g @ r)) for g, r in zip(grand, rho_eqs)])
    s0 = entropy(rho_s0)
    for t in times:
        u = scipy.linalg.expm(-1j * h * t)
        rho = u @ rho0 @ u.conj().T
        rho_s = reduced(rho, dims, (0,))
        rho_rs = [reduced(rho, dims, (r + 1,)) for r in range(n_res)]
        rho_res = reduced(rho, dims, tuple(range(1, n_res + 1)))
        s = entropy(rho_s)
        s_r = np.array([entropy(x) for x in rho_rs])
        s_joint = entropy(rho_res)
        s_tot = entropy(rho)
        e_r = np.array([np.real(np.trace(hr @ x)) for hr, x in zip(h_rs, rho_rs)])
        grand_t = np.array([np.real(np.trace(g @ x)) for g, x in zip(grand, rho_rs)])
        heat = grand0 - grand_t
        flow = float(np.dot(betas, heat))
        sigma = kron_all([rho_s] + rho_eqs)
        out["system_state"].append(rho_s)
        out["system_entropy"].append(s)
        out["system_energy"].append(np.real(np.trace(h_s @ rho_s)))
        out["interaction_energy"].append(np.real(np.trace(coupling @ rho)))
        out["reservoir_energy"].append(e_r)
        if number_ops is not None:
            out["reservoir_particle_number"].append(
                np.array([np.real(np.trace(n @ x)) for n, x in zip(number_ops, rho_rs)]))
        out["heat"].append(heat)
        out["entropy_flow"].append(flow)
        out["entropy_production"].append(relative_entropy(rho, sigma))
        out["entropy_production_balance"].append(s - s0 - flow)
        if n_res == 1:
            out["entropy_production_open"].append(
                relative_entropy(rho_s0, rho_s_eq) - relative_entropy(rho_s, rho_s_eq))
        out["total_entropy_t"].append(s_tot)
        out["reservoir_entropy"].append(s_r)
        out["mutual_information"].append(s + s_joint - s_tot)
        out["correlation_entropy"].append(s_tot - s - s_r.sum())
        out["reservoir_relative_entropy"].append(
            np.array([relative_entropy(x, e) for x, e in zip(rho_rs, rho_eqs)]))
        if n_res > 1:
            out["inter_reservoir_correlation"].append(s_r.sum() - s_joint)
    result = {k: np.array(v) for k, v in out.items() if v}
    result["total_entropy"] = entropy(rho0)
    return result
