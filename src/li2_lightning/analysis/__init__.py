"""Pure tensor functions for the Li2 analysis (docs/theory.md §3-§6).

- :mod:`~li2_lightning.analysis.gradients`: F, G_F (autograd and closed forms, Eq. 2), η_eff,
  V_ridge, G_F(∞) (Eq. 4) and the stage observables (alignment, independence, FFᵀ isotropy,
  Theorem 6 repulsion, Theorem 7 uncovered share).
- :mod:`~li2_lightning.analysis.energy`: the energy E and ∇E for all nodes (Eq. 7), normalised
  energies, exact maxima.
- :mod:`~li2_lightning.analysis.irreps`: irreducible representations of any finite group, real
  blocks (Fourier frequencies for Z_M).
- :mod:`~li2_lightning.analysis.features`: per-node irrep power, purity, matching, coverage.
"""

from li2_lightning.analysis import energy, features, gradients, irreps
from li2_lightning.analysis.energy import (energy_grad, fourier_max_energy, irrep_max_energies,
                                           normalized_energy)
from li2_lightning.analysis.energy import energy as E
from li2_lightning.analysis.gradients import (G_F_autograd, G_F_closed_form, G_F_inf, G_F_theory,
                                              V_fixed_point, V_ridge, alignment, eta_eff,
                                              gram_isotropy_distance, hidden, independence_ratio,
                                              repulsion, uncovered_share)

__all__ = [
    "energy", "features", "gradients", "irreps",
    "E", "energy_grad", "normalized_energy", "fourier_max_energy", "irrep_max_energies",
    "hidden", "G_F_autograd", "G_F_closed_form", "G_F_theory", "G_F_inf", "eta_eff", "V_ridge",
    "V_fixed_point", "alignment", "independence_ratio", "gram_isotropy_distance", "repulsion",
    "uncovered_share",
]
