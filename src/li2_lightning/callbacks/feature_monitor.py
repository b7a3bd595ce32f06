"""FeatureMonitor: which irreducible representation each hidden node has learned (docs/theory.md §4, §5, §6)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import Trainer
from typing_extensions import override

from li2_lightning.callbacks import _media, _plots
from li2_lightning.callbacks.base import Li2Callback, check_positive_int, check_unit
from li2_lightning.callbacks.snapshot import Snapshot


class FeatureMonitor(Li2Callback):
    """Logs feature purity and irrep coverage of the first layer W, under ``li2/feat/``.

    Each node's two operand halves (mean removed) are measured in the real irrep blocks of the
    group (Fourier frequencies for Z_M; ``analysis.irreps.real_blocks`` for any group). Every
    ``every_n_epochs``:

    - ``li2/feat/coverage``: share of the non-trivial blocks held by a pure node.

    Every ``detail_every_n_epochs`` also:

    - ``li2/feat/purity_mean``: mean share of a node's power in its dominant block;
    - ``li2/feat/pure_frac``: share of nodes with purity ≥ ``purity_threshold``;
    - ``li2/feat/purity_median``, ``li2/feat/n_covered`` (of ``li2/feat/n_blocks``);
    - ``li2/feat/matching_pure``: mean matching score of the pure nodes (1: the halves match as at
      an energy maximum, b ≈ ±Pa up to the symmetries of E; ``analysis.features.matching_score``);
    - ``li2/feat/pure_dim{d}``: for groups with irreps of several dimensions, the share of pure
      nodes whose block has complex dimension d.

    Every ``image_every_n_epochs``: a node × irrep heatmap (share of each node's power per block,
    nodes sorted by dominant block then purity): ``li2/feat/irrep_power`` on W&B and TensorBoard,
    and ``<log_dir>/li2/irrep_power_epoch{epoch}.png`` for other loggers (CSV).

    Args:
        every_n_epochs: cadence of the scalars users monitor (epochs 0, n, 2n, ... and the last).
        detail_every_n_epochs: cadence of the other scalars; 0: never.
        image_every_n_epochs: cadence of the heatmap; 0 disables it.
        purity_threshold: purity from which a node counts as pure, in (0, 1].

    Raises:
        ValueError: on a bad cadence or threshold.
    """

    def __init__(self, every_n_epochs: int = 1, detail_every_n_epochs: int = 10, image_every_n_epochs: int = 50,
                 purity_threshold: float = 0.9) -> None:
        super().__init__(every_n_epochs, detail_every_n_epochs)
        check_positive_int("image_every_n_epochs", image_every_n_epochs, allow_zero=True)
        check_unit("purity_threshold", purity_threshold, lo_open=True)
        self.image_every_n_epochs = image_every_n_epochs
        self.purity_threshold = purity_threshold

    @override
    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "image_every_n_epochs": self.image_every_n_epochs,
                "purity_threshold": self.purity_threshold}

    @override
    def snapshot_due(self, trainer: Trainer) -> bool:
        return self.scalars_due(trainer) or self.due(trainer, self.image_every_n_epochs)

    @override
    def media(self, trainer: Trainer, s: Snapshot) -> None:
        if not (trainer.is_global_zero and self.due(trainer, self.image_every_n_epochs)):
            return
        if not trainer.loggers:
            return
        epoch = trainer.current_epoch
        rgb = _plots.irrep_heatmap(s.power, s.basis.labels, epoch, None)
        _media.log_image(trainer, "li2/feat/irrep_power", rgb, f"epoch {epoch}", f"irrep_power_epoch{epoch:05d}.png")

    @override
    def compute(self, s: Snapshot, trainer: Optional[Trainer] = None) -> dict[str, float]:
        """Scalars of one snapshot (all of them without a trainer)."""
        pur = s.purity
        pure = pur >= self.purity_threshold
        covered = s.covered(self.purity_threshold)
        B = covered.shape[0]
        m = {
            "li2/feat/coverage": float(covered[1:].sum()) / (B - 1) if B > 1 else 1.0,
        }
        if trainer is not None and not self.detail_due(trainer):
            return m
        m.update({"li2/feat/purity_mean": float(pur.mean()), "li2/feat/pure_frac": float(pure.double().mean()), "li2/feat/purity_median": float(pur.median()), "li2/feat/n_covered": float(covered[1:].sum()),
                  "li2/feat/n_blocks": float(B - 1)})
        if bool(pure.any()):
            m["li2/feat/matching_pure"] = float(s.matching[pure].mean())
        dims = torch.tensor(s.basis.dims)
        if len(set(s.basis.dims[1:])) > 1:
            dom_dims = dims[s.dominant[pure].cpu()]
            for d in sorted(set(s.basis.dims[1:])):
                m[f"li2/feat/pure_dim{d}"] = float((dom_dims == d).double().mean()) if bool(pure.any()) else 0.0
        return m
