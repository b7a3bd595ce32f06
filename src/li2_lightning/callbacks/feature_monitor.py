"""FeatureMonitor: which irreducible representation each hidden node has learned (SPEC §4, §6.5)."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from li2_lightning.callbacks import _plots
from li2_lightning.callbacks import _shared as sh


class FeatureMonitor(Callback):
    """Logs feature purity and irrep coverage of the first layer W, under ``li2/feat/``.

    Each node's two operand halves (mean removed) are measured in the real irrep blocks of the
    group (Fourier frequencies for Z_M; ``analysis.irreps.real_blocks`` for any group). Every
    ``every_n_epochs``:

    - ``li2/feat/purity_mean``, ``purity_median``: share of a node's power in its dominant block;
    - ``li2/feat/pure_frac``: share of nodes with purity ≥ ``purity_threshold``;
    - ``li2/feat/coverage``: share of the non-trivial blocks held by a pure node, and
      ``li2/feat/n_covered`` (of ``li2/feat/n_blocks``);
    - ``li2/feat/matching_pure``: mean matching score of the pure nodes (1: the halves match as at
      an energy maximum, b ≈ ±Pa up to the symmetries of E; ``analysis.features.matching_score``);
    - ``li2/feat/pure_dim{d}``: for groups with irreps of several dimensions, the share of pure
      nodes whose block has complex dimension d.

    Every ``image_every_n_epochs``: a node × irrep heatmap (share of each node's power per block,
    nodes sorted by dominant block then purity): ``li2/feat/irrep_power`` on W&B, and
    ``<log_dir>/li2/irrep_power_epoch{epoch}.png`` for other loggers.

    Args:
        every_n_epochs: cadence of the scalars (epochs 0, n, 2n, ... and the last).
        image_every_n_epochs: cadence of the heatmap; 0 disables it.
        purity_threshold: purity from which a node counts as pure, in (0, 1].

    Raises:
        ValueError: on a bad cadence or threshold.
    """

    def __init__(self, every_n_epochs: int = 1, image_every_n_epochs: int = 50,
                 purity_threshold: float = 0.9) -> None:
        sh.check_positive_int("every_n_epochs", every_n_epochs)
        sh.check_positive_int("image_every_n_epochs", image_every_n_epochs, allow_zero=True)
        sh.check_unit("purity_threshold", purity_threshold, lo_open=True)
        self.every_n_epochs = every_n_epochs
        self.image_every_n_epochs = image_every_n_epochs
        self.purity_threshold = purity_threshold
        self.history: list[dict[str, float]] = []

    def _any_due(self, trainer: Trainer) -> tuple[bool, bool]:
        return sh.due(trainer, self.every_n_epochs), sh.due(trainer, self.image_every_n_epochs)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sh.epoch_start(trainer, pl_module, any(self._any_due(trainer)))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scalars_due, image_due = self._any_due(trainer)
        if not (scalars_due or image_due):
            return
        s = sh.snapshot(trainer, pl_module)
        m = self.compute(s)
        if scalars_due:
            self.history.append({"epoch": float(trainer.current_epoch), **m})
        media = {}
        if image_due and trainer.is_global_zero:
            epoch = trainer.current_epoch
            path = None
            if sh.needs_files(trainer):
                path = os.path.join(sh.media_dir(trainer), f"irrep_power_epoch{epoch:05d}.png")
            rgb = _plots.irrep_heatmap(s.power, s.basis.labels, epoch, path)
            if sh.has_wandb(trainer):
                wandb = sh.require_wandb()
                media["li2/feat/irrep_power"] = wandb.Image(rgb, caption=f"epoch {epoch}")
        sh.emit(trainer, m if scalars_due else {}, media)

    def compute(self, s: "sh.Snapshot") -> dict[str, float]:
        """Scalars of one snapshot."""
        pur = s.purity
        pure = pur >= self.purity_threshold
        covered = s.covered(self.purity_threshold)
        B = covered.shape[0]
        m = {
            "li2/feat/purity_mean": float(pur.mean()),
            "li2/feat/purity_median": float(pur.median()),
            "li2/feat/pure_frac": float(pure.double().mean()),
            "li2/feat/coverage": float(covered[1:].sum()) / (B - 1) if B > 1 else 1.0,
            "li2/feat/n_covered": float(covered[1:].sum()),
            "li2/feat/n_blocks": float(B - 1),
        }
        if bool(pure.any()):
            m["li2/feat/matching_pure"] = float(s.matching[pure].mean())
        dims = torch.tensor(s.basis.dims)
        if len(set(s.basis.dims[1:])) > 1:
            dom_dims = dims[s.dominant[pure].cpu()]
            for d in sorted(set(s.basis.dims[1:])):
                m[f"li2/feat/pure_dim{d}"] = float((dom_dims == d).double().mean()) if bool(pure.any()) else 0.0
        return m

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
