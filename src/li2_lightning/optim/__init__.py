"""Optimizers: Muon beside Adam/AdamW in one optimizer, and its Newton-Schulz kernel."""

from li2_lightning.optim.muon import Muon
from li2_lightning.optim.newton_schulz import (
    COEFFICIENT_SCHEDULES,
    KELLER_COEFFICIENTS,
    KELLER_QUINTIC,
    LI2_COEFFICIENTS,
    newton_schulz,
)

__all__ = [
    "COEFFICIENT_SCHEDULES",
    "KELLER_COEFFICIENTS",
    "KELLER_QUINTIC",
    "LI2_COEFFICIENTS",
    "Muon",
    "newton_schulz",
]
