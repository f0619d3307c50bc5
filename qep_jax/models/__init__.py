"""Model Hamiltonians: each file one model."""

from ._spin_gorm import SpinGORM as SpinGORM
