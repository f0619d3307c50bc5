"""qep_jax: exact entropy production of finite quantum systems coupled to finite reservoirs.

Esposito, Lindenberg & Van den Broeck, New J. Phys. 12, 013013 (2010). Units hbar = k_B = 1.
The package never changes JAX's global configuration; enable float64 yourself with
``jax.config.update("jax_enable_x64", True)``.
"""

# A Ctrl-C that Python drops while these imports run (in jax's gc callback) is raised after them
# instead of being lost (see _interrupt.reraise_dropped_ctrl_c); nothing else changes.
from ._interrupt import reraise_dropped_ctrl_c as _reraise_dropped_ctrl_c

with _reraise_dropped_ctrl_c():
    from ._driven import DrivenTrajectory as DrivenTrajectory
    from ._driven import LandauerBounds as LandauerBounds
    from ._driven import drive as drive
    from ._driven import landauer_bounds as landauer_bounds
    from ._ensemble import QUANTITIES as QUANTITIES
    from ._ensemble import EnsembleResult as EnsembleResult
    from ._ensemble import run_ensemble as run_ensemble
    from ._entropy import logm_hermitian as logm_hermitian
    from ._entropy import relative_entropy as relative_entropy
    from ._entropy import von_neumann_entropy as von_neumann_entropy
    from ._evolve import evolve as evolve
    from ._master_equation import MasterEquationPrediction as MasterEquationPrediction
    from ._master_equation import RedfieldRates as RedfieldRates
    from ._master_equation import open_entropy_production as open_entropy_production
    from ._master_equation import redfield_prediction as redfield_prediction
    from ._master_equation import redfield_rates as redfield_rates
    from ._master_equation import redfield_state as redfield_state
    from ._master_equation import reservoir_spectrum as reservoir_spectrum
    from ._master_equation import reservoir_spectrum_lines as reservoir_spectrum_lines
    from ._master_equation import reservoir_spectrum_sampled as reservoir_spectrum_sampled
    from ._master_equation import shell_pair_probability as shell_pair_probability
    from ._master_equation import shell_prediction as shell_prediction
    from ._io import load_run as load_run
    from ._io import run_to_file as run_to_file
    from ._io import write_run as write_run
    from ._open_system import InputError as InputError
    from ._open_system import OpenSystem as OpenSystem
    from ._partial_trace import partial_trace as partial_trace
    from ._random import goe as goe
    from ._spectral import Spectrum as Spectrum
    from ._spectral import diagonalize as diagonalize
    from ._trajectory import Trajectory as Trajectory
    from .models import SpinGORM as SpinGORM
    from .models import SpinTwoGORM as SpinTwoGORM
    from .protocols import FourierRamp as FourierRamp
    from .protocols import PiecewiseConstant as PiecewiseConstant

del _reraise_dropped_ctrl_c

__version__ = "0.1.0"

__all__ = [
    "QUANTITIES",
    "EnsembleResult",
    "run_ensemble",
    "load_run",
    "run_to_file",
    "write_run",
    "DrivenTrajectory",
    "FourierRamp",
    "LandauerBounds",
    "PiecewiseConstant",
    "drive",
    "landauer_bounds",
    "InputError",
    "OpenSystem",
    "SpinGORM",
    "SpinTwoGORM",
    "Spectrum",
    "Trajectory",
    "diagonalize",
    "evolve",
    "goe",
    "logm_hermitian",
    "partial_trace",
    "relative_entropy",
    "von_neumann_entropy",
    "MasterEquationPrediction",
    "RedfieldRates",
    "open_entropy_production",
    "redfield_prediction",
    "redfield_rates",
    "redfield_state",
    "reservoir_spectrum",
    "reservoir_spectrum_lines",
    "reservoir_spectrum_sampled",
    "shell_pair_probability",
    "shell_prediction",
]
