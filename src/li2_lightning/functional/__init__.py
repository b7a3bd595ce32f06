"""Pure tensor functions for the Li2 net and its optimizers, with an optional member dimension.

- :mod:`~li2_lightning.functional.model`: the net's math (activations with derivatives and degree of
  homogeneity, the gathered preactivation XW, readout, per-row losses), for one net (W (2M, K)) or
  S nets at once (W (S, 2M, K)).
- :mod:`~li2_lightning.functional.updates`: optimizer update rules (Adam, AdamW, SGD, Muon with its
  presets) as in-place functions of one parameter, its gradient and its state, with learning rate
  and weight decay given as scalars or (S,) tensors broadcast over the member dimension.

``TwoLayerNet``, ``losses``, ``analysis.gradients``, ``optim.Muon`` and ``PopulationModule`` are
thin shells around these.
"""

from li2_lightning.functional.model import (
    ACTIVATIONS,
    LOSSES,
    Activation,
    check_activation,
    check_loss,
    check_M_K,
    forward,
    hidden,
    loss_rows,
    loss_sum,
    member_rows,
    preactivation,
    readout,
    sigma,
    sigma_prime,
)
from li2_lightning.functional.updates import (
    MUON_PRESETS,
    MuonPreset,
    adam_,
    muon_,
    muon_apply_,
    muon_direction_,
    muon_orthogonalize,
    sgd_,
)

__all__ = [
    "ACTIVATIONS", "LOSSES", "Activation", "check_activation", "check_loss", "check_M_K", "forward",
    "hidden", "loss_rows", "loss_sum", "member_rows", "preactivation", "readout", "sigma", "sigma_prime",
    "MUON_PRESETS", "MuonPreset", "adam_", "muon_", "muon_apply_", "muon_direction_",
    "muon_orthogonalize", "sgd_",
]
