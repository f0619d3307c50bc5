"""Spectral propagator: one diagonalisation, then every time point from the eigenbasis.

With ``H = W diag(E) W^dag`` and ``phi_a(t) = exp(-i E_a t)``,
``rho(t) = W diag(phi) rho0~ diag(phi*) W^dag`` where ``rho0~ = W^dag rho(0) W``. An expectation
value is ``<O>_t = sum_ab M_ab phi_a phi_b*`` with ``M_ab = rho0~_ab O~_ba`` precomputed once,
so each time point costs ``O(D^2)`` per observable instead of the ``O(D^3)`` of forming rho(t).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from . import _linalg


class Spectrum(NamedTuple):
    """Eigendecomposition ``H = vectors @ diag(energies) @ vectors^dag``.

    energies: ``(D,)`` ascending. vectors: ``(D, D)``, column ``a`` is eigenvector ``a``.
    """

    energies: Array
    vectors: Array


def diagonalize(h: Array) -> Spectrum:
    """Eigendecomposition of a Hermitian ``(D, D)`` matrix (real symmetric stays real)."""
    energies, vectors = _linalg.eigh(h)
    return Spectrum(energies, vectors)


def to_eigenbasis(spectrum: Spectrum, op: Array) -> Array:
    """``W^dag op W`` ``(D, D)``."""
    w = spectrum.vectors
    return w.conj().T @ (op @ w)


def observable_weights(rho0_eig: Array, op_eig: Array) -> Array:
    """``M_ab = rho0~_ab O~_ba`` so that ``<O>_t = sum_ab M_ab phi_a phi_b*``; ``(D, D)``."""
    return rho0_eig * op_eig.T


def _phases(energies: Array, t: Array) -> tuple[Array, Array]:
    angle = energies * t
    return jnp.cos(angle), jnp.sin(angle)


def expectation_at(energies: Array, weights: Array, t: Array) -> Array:
    """``sum_ab M_kab exp(-i (E_a - E_b) t)`` for one time point; ``(n, D, D) -> (n,)`` complex.

    Real weights (real symmetric ``H``) use two real matrix-vector products instead of complex ones.
    """
    cos, sin = _phases(energies, t)
    if jnp.iscomplexobj(weights):
        right = weights @ (cos + 1j * sin)  # (n, D): sum_b M_ab phi_b*
        return jnp.sum((cos - 1j * sin) * right, axis=-1)
    right_c = weights @ cos
    right_s = weights @ sin
    real = jnp.sum(cos * right_c + sin * right_s, axis=-1)
    imag = jnp.sum(cos * right_s - sin * right_c, axis=-1)
    return jax.lax.complex(real, imag)


def propagate_factor(spectrum: Spectrum, factor_eig: Array, t: Array) -> Array:
    """``X(t) = W diag(phi(t)) C`` with ``C = W^dag F`` and ``rho(0) = F F^dag``; ``(D, R)``.

    Then ``rho(t) = X X^dag``; reduced states are contractions of ``X`` with itself, so the
    ``D x D`` state is never formed.
    """
    w = spectrum.vectors
    cos, sin = _phases(spectrum.energies, t)
    if jnp.iscomplexobj(w) or jnp.iscomplexobj(factor_eig):
        return (w * (cos - 1j * sin)) @ factor_eig
    return jax.lax.complex((w * cos) @ factor_eig, -((w * sin) @ factor_eig))


def reduced_from_factor(factor: Array, dims: tuple[int, ...], keep: int) -> Array:
    """``Tr_{not keep} X X^dag`` for ``X`` of shape ``(D, R)``; returns ``(d_keep, d_keep)``."""
    n = len(dims)
    x = factor.reshape(dims + (factor.shape[-1],))
    rank_axis = n
    left = list(range(n)) + [rank_axis]
    right = [i if i != keep else n + 1 for i in range(n)] + [rank_axis]
    return jnp.einsum(x, left, x.conj(), right, [keep, n + 1])


def reservoirs_from_factor(factor: Array, system_dim: int) -> Array:
    """``Tr_s X X^dag``: the joint state of all reservoirs, ``(D/d_s, D/d_s)``."""
    x = factor.reshape(system_dim, -1, factor.shape[-1])
    return jnp.einsum("saq,sbq->ab", x, x.conj())
