"""The implementations being timed: qep_jax and its three peers, on the same spin-GORM problem.

Each ``route_<name>(n, x, times)`` returns ``(fn, extract)``: ``fn()`` runs the whole computation
once (what is timed) and ``extract(out)`` turns its output into NumPy time series keyed like
:class:`qep_jax.Trajectory` fields, for the agreement check against qep_jax.

Quantities. Cheap set: ``rho_s(t)``, ``S(t)``, heat ``Q(t)``, ``D_iS(t)``. Full set adds the
reservoir entropy ``S_r(t)``, the mutual information ``I(s:r)(t)`` and ``D[rho_r(t)||rho_r^eq]``.
Every peer forms the ``2N x 2N`` state ``rho(t)`` at each time point (that is the point of the
comparison); the peers get ``D_iS`` from the balance ``dS - beta Q`` (eq. 7), which equals eq. 10.
"""

from __future__ import annotations

import numpy as np

from _common import BETA, dense_problem

CHEAP_KEYS = ("entropy_production", "system_entropy", "heat")
FULL_KEYS = CHEAP_KEYS + ("reservoir_entropy", "mutual_information", "reservoir_relative_entropy")


def _np_entropy(p):
    p = np.clip(np.asarray(p), 0.0, None)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _trajectory_series(traj, keys) -> dict:
    out = {}
    for k in keys:
        v = np.asarray(getattr(traj, k))
        out[k] = v[..., 0] if k in ("heat", "reservoir_entropy", "reservoir_relative_entropy") else v
    return out


# ----------------------------------------------------------------------------------------------
# qep_jax


def route_ours_diag(n, x, times):
    """``qep_jax.diagonalize`` (jitted) of the ``2N x 2N`` Hamiltonian alone."""
    import jax

    import qep_jax
    from _common import problem

    model, _, _ = problem(n, 2)
    h = model.open_system(x).hamiltonian()
    diag = jax.jit(qep_jax.diagonalize)
    return (lambda: diag(h)), (lambda out: {"energies": np.asarray(out.energies)})


def _route_ours(n, x, times, full):
    import jax.numpy as jnp

    import qep_jax
    from _common import problem

    model, _, _ = problem(n, 2)
    system = model.open_system(jnp.asarray(x))
    t = jnp.asarray(times)
    keys = FULL_KEYS if full else CHEAP_KEYS
    return (lambda: qep_jax.evolve(system, t, reservoir_entropies=full)), (
        lambda out: _trajectory_series(out, keys)
    )


def route_ours_cheap(n, x, times):
    """``qep_jax.evolve(..., reservoir_entropies=False)``."""
    return _route_ours(n, x, times, False)


def route_ours_full(n, x, times):
    """``qep_jax.evolve(..., reservoir_entropies=True)``."""
    return _route_ours(n, x, times, True)


def _grad_objective(n, x, times, full):
    import jax.numpy as jnp

    import qep_jax
    from _common import BETA as beta, DELTA

    t = jnp.asarray(times)
    xj = jnp.asarray(x)

    def objective(coupling):
        model = qep_jax.SpinGORM(n_levels=n, delta=DELTA, coupling_strength=coupling, beta=beta)
        traj = qep_jax.evolve(model.open_system(xj), t, reservoir_entropies=full)
        return traj.mutual_information[-1] if full else traj.entropy_production[-1]

    return objective


def _route_grad(n, x, times, full):
    """``jax.jit(jax.grad(...))`` of ``D_iS(t_final)`` (cheap) or ``I(s:r)(t_final)`` (full) wrt lambda.

    Plain autodiff through the public API; ``extract`` also returns a central finite difference
    (step 1e-6, float64) so the check validates the gradient, not only the forward values.
    """
    import jax
    import jax.numpy as jnp

    from _common import COUPLING

    objective = _grad_objective(n, x, times, full)
    grad = jax.jit(jax.grad(objective))
    lam = jnp.asarray(COUPLING)

    def extract(out):
        h = 1e-6
        f = jax.jit(objective)
        fd = (float(f(lam + h)) - float(f(lam - h))) / (2 * h)
        return {"gradient": np.asarray(out), "finite_difference": np.asarray(fd)}

    return (lambda: grad(lam)), extract


def route_ours_grad_cheap(n, x, times):
    return _route_grad(n, x, times, False)


def route_ours_grad_full(n, x, times):
    return _route_grad(n, x, times, True)


# ----------------------------------------------------------------------------------------------
# Peer 1: the dense QuTiP route.


def _route_qutip(n, x, times, full, conserved=False, eigenbasis=False):
    """The dense QuTiP route; ``conserved`` / ``eigenbasis`` select the variants below.

    Prescribed route (both flags off): ``H.eigenstates()`` once, then per time point
    ``U(t) = W exp(-iEt) W^dag`` as a ``Qobj``, ``rho = U * rho0 * U.dag()``, ``ptrace``,
    ``entropy_vn``, ``expect``; the full set adds ``ptrace(1)``, ``entropy_vn``,
    ``entropy_mutual(rho, 0, 1)`` (which diagonalizes the whole ``2N x 2N`` state) and
    ``entropy_relative``.

    ``conserved``: ``I = S + S_r - S_tot`` with ``S_tot = entropy_vn(rho0)`` computed once per call
    (unitary evolution conserves it), the form the dynamiqs and naive routes use; otherwise the
    same calls. ``eigenbasis``: ``rho0`` rotated into the eigenbasis once (``W^dag rho0 W``); per
    time point the phases ``exp(-i(E_j - E_k)t)`` multiply it elementwise and ``W rho_e(t) W^dag``
    (2 dense products instead of the 3 of building ``U`` and ``U rho0 U^dag``). Only an opt-in
    measurement of what the prescribed ``U rho0 U^dag`` form costs; not in the default sweep.
    """
    import qutip

    h, h_r, rho0_np, rho_r_eq_np = dense_problem(n, x)
    dims = [[2, n], [2, n]]
    hamiltonian = qutip.Qobj(h, dims=dims)
    rho0 = qutip.Qobj(rho0_np, dims=dims)
    h_res = qutip.tensor(qutip.qeye(2), qutip.Qobj(np.diag(h_r)))
    rho_r_eq = qutip.Qobj(rho_r_eq_np)
    heat0 = qutip.expect(h_res, rho0)
    s0 = qutip.entropy_vn(rho0.ptrace(0))

    def run():
        # Eigendecomposition once; then every time point forms rho(t) and its reductions.
        energies, kets = hamiltonian.eigenstates()
        w = np.hstack([k.full() for k in kets])
        if eigenbasis:
            w_q = qutip.Qobj(w, dims=dims)
            rho0_e = (w_q.dag() * rho0 * w_q).full()
        if full and conserved:
            s_tot = qutip.entropy_vn(rho0)  # S(rho(t)) = S(rho(0)) under unitary evolution
        series = {k: [] for k in (FULL_KEYS if full else CHEAP_KEYS)}
        for t in times:
            if eigenbasis:
                phase = np.exp(-1j * energies * t)
                rho = w_q * qutip.Qobj(phase[:, None] * rho0_e * phase.conj()[None, :], dims=dims) * w_q.dag()
            else:
                u = qutip.Qobj((w * np.exp(-1j * energies * t)) @ w.conj().T, dims=dims)
                rho = u * rho0 * u.dag()
            rho_s = rho.ptrace(0)
            s = qutip.entropy_vn(rho_s)
            heat = heat0 - qutip.expect(h_res, rho)
            series["system_entropy"].append(s)
            series["heat"].append(heat)
            series["entropy_production"].append(s - s0 - BETA * heat)
            if full:
                rho_r = rho.ptrace(1)
                s_r = qutip.entropy_vn(rho_r)
                series["reservoir_entropy"].append(s_r)
                series["mutual_information"].append(
                    s + s_r - s_tot if conserved else qutip.entropy_mutual(rho, 0, 1))
                series["reservoir_relative_entropy"].append(qutip.entropy_relative(rho_r, rho_r_eq))
        return series

    return run, (lambda out: {k: np.asarray(v) for k, v in out.items()})


def route_qutip_cheap(n, x, times):
    return _route_qutip(n, x, times, False)


def route_qutip_full(n, x, times):
    return _route_qutip(n, x, times, True)


def route_qutip_full_conserved(n, x, times):
    """The full set with ``I = S + S_r - S_tot`` (``S_tot`` from t = 0), as dynamiqs / naive do."""
    return _route_qutip(n, x, times, True, conserved=True)


def route_qutip_cheap_eigenbasis(n, x, times):
    return _route_qutip(n, x, times, False, eigenbasis=True)


def route_qutip_full_conserved_eigenbasis(n, x, times):
    return _route_qutip(n, x, times, True, conserved=True, eigenbasis=True)


# ----------------------------------------------------------------------------------------------
# Peer 2: dynamiqs (batched sesolve of the initial state's N basis states, then its ptrace / entropy_vn).


def _route_dynamiqs(n, x, times, full, propagator=False):
    import jax
    import jax.numpy as jnp

    import dynamiqs as dq

    dq.set_precision("double")
    dq.set_device("cpu")
    h, h_r, rho0_np, rho_r_eq_np = dense_problem(n, x)
    hamiltonian = dq.asqarray(h, dims=(2, n))
    rho0 = dq.asqarray(rho0_np, dims=(2, n))
    h_res = dq.asqarray(np.kron(np.eye(2), np.diag(h_r)), dims=(2, n))
    rho_r_eq = dq.asqarray(rho_r_eq_np)
    p = jnp.asarray(np.diag(rho_r_eq_np))
    # rho(0) = sum_a p_a |0, a><0, a|: the N basis states |0, a>, as one batch of kets (N, D, 1).
    kets = dq.asqarray(np.eye(2 * n)[:n, :, None].astype(complex), dims=(2, n))
    heat0 = float(np.sum(np.diag(rho0_np) * np.tile(h_r, 2)))
    s0 = 0.0  # rho_s(0) = |0><0| is pure
    s_tot = float(_np_entropy(np.diag(rho_r_eq_np)))  # S(rho(t)) is conserved

    @jax.jit
    def run(tsave):
        if propagator:
            # Constant H: sepropagator uses its Expm method, U(t) = exp(-iHt) for every saved time.
            u = dq.sepropagator(hamiltonian, tsave).propagators  # (T, D, D)
            rho = u @ rho0 @ u.dag()
        else:
            # The route: batched sesolve of the N initial basis states (Expm: constant H, exact
            # to rounding; the default adaptive ODE solver's ~1e-6 would fail the 1e-8 agreement check),
            # then rho(t) = sum_a p_a |psi_a(t)><psi_a(t)|.
            psi = dq.sesolve(hamiltonian, kets, tsave, method=dq.method.Expm()).states.to_jax()[..., 0]
            rho = dq.asqarray(jnp.einsum("a,atd,ate->tde", p, psi, psi.conj()), dims=(2, n))  # (T, D, D)
        s = dq.entropy_vn(dq.ptrace(rho, 0))
        heat = heat0 - dq.expect(h_res, rho).real
        out = {"system_entropy": s, "heat": heat, "entropy_production": s - s0 - BETA * heat}
        if full:
            rho_r = dq.ptrace(rho, 1)
            s_r = dq.entropy_vn(rho_r)
            out["reservoir_entropy"] = s_r
            out["mutual_information"] = s + s_r - s_tot
            out["reservoir_relative_entropy"] = dq.entropy_relative(rho_r, rho_r_eq)
        return out

    tsave = jnp.asarray(times)
    return (lambda: run(tsave)), (lambda out: {k: np.asarray(v) for k, v in out.items()})


def route_dynamiqs_cheap(n, x, times):
    return _route_dynamiqs(n, x, times, False)


def route_dynamiqs_full(n, x, times):
    return _route_dynamiqs(n, x, times, True)


def route_dynamiqs_cheap_propagator(n, x, times):
    return _route_dynamiqs(n, x, times, False, propagator=True)


def route_dynamiqs_full_propagator(n, x, times):
    return _route_dynamiqs(n, x, times, True, propagator=True)


# ----------------------------------------------------------------------------------------------
# Peer 3: naive dense JAX (eigh once, vmap over time of dense rho(t), partial trace, eigvalsh).


def _jnp_entropy(p):
    import jax.numpy as jnp

    p = jnp.clip(p, 0.0, None)
    safe = jnp.where(p > 0, p, 1.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0), axis=-1)


def _route_naive(n, x, times, full, propagator=False):
    """``jax.jit``: ``eigh`` once, ``vmap`` over time of the dense ``rho(t)``, partial traces by
    ``einsum``, ``eigvalsh`` of ``rho_s`` (and ``rho_r`` for the full set).

    ``rho(0)`` is rotated into the eigenbasis once (``rho_e = W^dag rho0 W``); each time point
    multiplies it by the phases ``exp(-i(E_j - E_k)t)`` and forms ``rho(t) = W rho_e(t) W^dag``:
    2 dense ``D x D`` products per time point. ``propagator=True`` is the earlier form that builds
    ``U(t) = W exp(-iEt) W^dag`` and ``U rho0 U^dag`` (3 products; opt-in routes
    ``naive-*-propagator``, to measure the difference).
    """
    import jax
    import jax.numpy as jnp

    h, h_r, rho0_np, rho_r_eq_np = dense_problem(n, x)
    p_eq = np.diag(rho_r_eq_np)
    log_p_eq = jnp.asarray(np.log(p_eq))
    heat0 = float(np.sum(p_eq * h_r))
    s_tot = float(_np_entropy(p_eq))
    h_r_j = jnp.asarray(h_r)

    @jax.jit
    def run(h, rho0, times):
        energies, w = jnp.linalg.eigh(h)
        w = w.astype(rho0.dtype)
        rho0_e = w.conj().T @ rho0 @ w

        def at(t):
            phase = jnp.exp(-1j * energies * t)
            if propagator:
                u = (w * phase) @ w.conj().T
                rho = u @ rho0 @ u.conj().T
            else:
                rho = w @ (phase[:, None] * rho0_e * phase.conj()[None, :]) @ w.conj().T
            rho = rho.reshape(2, n, 2, n)
            rho_s = jnp.einsum("iaja->ij", rho)
            rho_r = jnp.einsum("iaib->ab", rho)
            s = _jnp_entropy(jnp.linalg.eigvalsh(rho_s))
            heat = heat0 - jnp.real(jnp.sum(h_r_j * jnp.diagonal(rho_r)))
            out = {"system_entropy": s, "heat": heat, "entropy_production": s - BETA * heat}
            if full:
                s_r = _jnp_entropy(jnp.linalg.eigvalsh(rho_r))
                out["reservoir_entropy"] = s_r
                out["mutual_information"] = s + s_r - s_tot
                # ln rho_r^eq is diagonal: D = -S_r - sum_a rho_r,aa ln p_a.
                out["reservoir_relative_entropy"] = -s_r - jnp.real(jnp.sum(jnp.diagonal(rho_r) * log_p_eq))
            return out

        return jax.vmap(at)(times)

    args = (jnp.asarray(h), jnp.asarray(rho0_np, dtype=complex), jnp.asarray(times))
    return (lambda: run(*args)), (lambda out: {k: np.asarray(v) for k, v in out.items()})


def route_naive_cheap(n, x, times):
    return _route_naive(n, x, times, False)


def route_naive_full(n, x, times):
    return _route_naive(n, x, times, True)


def route_naive_cheap_propagator(n, x, times):
    return _route_naive(n, x, times, False, propagator=True)


def route_naive_full_propagator(n, x, times):
    return _route_naive(n, x, times, True, propagator=True)


# Route names are ``<peer>-<set>[-<variant>]``; see route_parts.
ROUTES = {
    "ours-diag": route_ours_diag,
    "ours-cheap": route_ours_cheap,
    "ours-full": route_ours_full,
    "ours-grad-cheap": route_ours_grad_cheap,
    "ours-grad-full": route_ours_grad_full,
    "qutip-cheap": route_qutip_cheap,
    "qutip-full": route_qutip_full,
    "qutip-full-conserved": route_qutip_full_conserved,
    "qutip-cheap-eigenbasis": route_qutip_cheap_eigenbasis,
    "qutip-full-conserved-eigenbasis": route_qutip_full_conserved_eigenbasis,
    "dynamiqs-cheap": route_dynamiqs_cheap,
    "dynamiqs-full": route_dynamiqs_full,
    "dynamiqs-cheap-propagator": route_dynamiqs_cheap_propagator,
    "dynamiqs-full-propagator": route_dynamiqs_full_propagator,
    "naive-cheap": route_naive_cheap,
    "naive-full": route_naive_full,
    "naive-cheap-propagator": route_naive_cheap_propagator,
    "naive-full-propagator": route_naive_full_propagator,
}
# SpinGORM.simulate over R realizations (default batch), timed per realization (``_worker.py`` runs
# them; R per route): how the library is used, and the only routes whose diagonalizations use both
# cores (the peers' loops over realizations would run one at a time on one core).
ENSEMBLE_REALIZATIONS = {"ours-cheap-ensemble": 64, "ours-full-ensemble": 16}
# Opt-in variants: run only when named in --routes (they measure a formulation choice).
OPTIONAL_ROUTES = ("qutip-cheap-eigenbasis", "qutip-full-conserved-eigenbasis",
                   "naive-cheap-propagator", "naive-full-propagator",
                   "dynamiqs-cheap-propagator", "dynamiqs-full-propagator")
PEER_OF_ROUTE = {name: name.split("-")[0] for name in ROUTES}


def route_parts(route: str) -> tuple[str, str, str]:
    """``(peer, set, variant)`` of a peer route: ``qutip-full-conserved`` -> ``("qutip", "full",
    "conserved")``; ``set`` is ``cheap`` or ``full``, ``variant`` may be ``""``."""
    peer, _, rest = route.partition("-")
    which, _, variant = rest.partition("-")
    return peer, which, variant


def is_full(route: str) -> bool:
    """Whether a peer route computes the full set (its check then covers the reservoir series)."""
    return route_parts(route)[1] == "full"
