"""The result pytree of :func:`qep_jax.evolve`."""

from __future__ import annotations

import dataclasses

import jax
from jax import Array

# Fields that exist only with reservoir entropies, and only for K = 1 / K >= 2.
EXPENSIVE_FIELDS = (
    "reservoir_entropy",
    "mutual_information",
    "correlation_entropy",
    "reservoir_relative_entropy",
    "inter_reservoir_correlation",
)


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Time series of every entropy-production quantity (units hbar = k_B = 1, entropies in nats).

    Shapes are for one realization: ``T`` time points, ``K`` reservoirs, system dimension ``d_s``.
    Batched runners prepend a realization axis. Fields that do not apply are ``None``:
    ``entropy_production_open`` for ``K >= 2``; the reservoir-entropy fields when
    ``reservoir_entropies=False``; ``inter_reservoir_correlation`` for ``K = 1``;
    ``reservoir_particle_number`` without number operators.

    Fields:
        times: ``(T,)``.
        system_state: ``(T, d_s, d_s)`` ``rho_s(t) = Tr_R rho(t)``.
        system_entropy: ``(T,)`` ``S(t) = -Tr rho_s ln rho_s``.
        system_energy: ``(T,)`` ``<H_s>_t``.
        interaction_energy: ``(T,)`` ``<V>_t``.
        reservoir_energy: ``(T, K)`` ``<H_r>_t``.
        reservoir_particle_number: ``(T, K)`` ``<N_r>_t`` or ``None``.
        heat: ``(T, K)`` ``Q_r(t) = <H_r - mu_r N_r>_0 - <H_r - mu_r N_r>_t`` (eq. 9; heat *into* the system).
        entropy_flow: ``(T,)`` ``D_eS = sum_r beta_r Q_r`` (eq. 8).
        entropy_production: ``(T,)`` ``D_iS = D[rho(t) || rho_s(t) (x) prod_r rho_r^eq]`` (eq. 10),
            evaluated with the closed form ``ln rho_r^eq = -beta_r (H_r - mu_r N_r) - ln Z_r``.
        entropy_production_balance: ``(T,)`` ``dS - D_eS`` (eq. 7).
        entropy_production_open: ``(T,)`` ``D[rho_s(0)||rho_s^eq] - D[rho_s(t)||rho_s^eq]`` (eq. 25, K = 1).
        total_entropy: ``()`` ``S_tot = -Tr rho ln rho``, conserved by unitary dynamics.
        reservoir_entropy: ``(T, K)`` ``S_r(t)`` (eq. 13).
        mutual_information: ``(T,)`` ``I(s : r_1...r_K) = S + S(rho_R) - S_tot``.
        correlation_entropy: ``(T,)`` ``S_c = S_tot - S - sum_r S_r <= 0`` (eq. 12).
        reservoir_relative_entropy: ``(T, K)`` ``D[rho_r(t) || rho_r^eq]`` (eq. 17).
        inter_reservoir_correlation: ``(T,)`` ``sum_r S_r - S(rho_R)`` (K >= 2), so that
            ``-S_c = mutual_information + inter_reservoir_correlation``.
    """

    times: Array
    system_state: Array
    system_entropy: Array
    system_energy: Array
    interaction_energy: Array
    reservoir_energy: Array
    reservoir_particle_number: Array | None
    heat: Array
    entropy_flow: Array
    entropy_production: Array
    entropy_production_balance: Array
    entropy_production_open: Array | None
    total_entropy: Array
    reservoir_entropy: Array | None = None
    mutual_information: Array | None = None
    correlation_entropy: Array | None = None
    reservoir_relative_entropy: Array | None = None
    inter_reservoir_correlation: Array | None = None

    def fields(self) -> dict[str, Array]:
        """The fields that are present, as a dict (``None`` fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


jax.tree_util.register_dataclass(
    Trajectory, data_fields=[f.name for f in dataclasses.fields(Trajectory)], meta_fields=[]
)
