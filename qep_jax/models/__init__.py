"""Model Hamiltonians: each file one model."""

from ._spin_gorm import SpinGORM as SpinGORM
from ._spin_two_gorm import SpinTwoGORM as SpinTwoGORM
