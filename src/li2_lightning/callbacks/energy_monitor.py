"""EnergyMonitor: each hidden node's energy E(w_j/‖w_j‖) against an exact maximum (SPEC §4, §6.6)."""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from li2_lightning.analysis import energy as en
from li2_lightning.callbacks import _plots
from li2_lightning.callbacks import _shared as sh


class EnergyMonitor(Callback):
    """Logs the per-node energy of Stage II on the training rows, under ``li2/energy/``.

    E(w) = ½‖Ỹᵀσ(Xw)‖² (Theorem 1) is evaluated for every node on the unit sphere, w_j/‖w_j‖,
    and compared with ``li2/energy/ref``: the largest energy on the same rows of a unit w whose
    two operand halves lie in one irrep block (Theorem 2's maxima, found once at the start of
    training by projected gradient ascent inside each block). A node at ratio ≈ 1 sits on an
    exact irrep maximum; with scarce data, memorisation maxima can exceed 1 (SPEC §4).

    Every ``every_n_epochs``: ``li2/energy/mean``, ``median``, ``max`` and the ratios
    ``li2/energy/ratio_mean``, ``ratio_max``; on W&B a histogram ``li2/energy/hist`` of the
    ratios. Every ``image_every_n_epochs``, for loggers other than W&B, the histogram as a PNG in
    ``<log_dir>/li2/energy_hist_epoch{epoch}.png``.

    Args:
        every_n_epochs: cadence (epochs 0, n, 2n, ... and the last).
        image_every_n_epochs: cadence of the PNG histogram for non-W&B loggers; 0 disables.
        histogram: log the W&B histogram at every logged epoch.
        reference: compute ``li2/energy/ref`` and the ratios (about a second at the start for Z71).

    Raises:
        ValueError: on a cadence that is not a non-negative integer.
    """

    def __init__(self, every_n_epochs: int = 1, image_every_n_epochs: int = 50,
                 histogram: bool = True, reference: bool = True) -> None:
        sh.check_positive_int("every_n_epochs", every_n_epochs)
        sh.check_positive_int("image_every_n_epochs", image_every_n_epochs, allow_zero=True)
        self.every_n_epochs = every_n_epochs
        self.image_every_n_epochs = image_every_n_epochs
        self.histogram = bool(histogram)
        self.reference = bool(reference)
        self.E_ref: Optional[float] = None
        self.history: list[dict[str, float]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.reference and self.E_ref is None:
            self.E_ref = self.reference_energy(sh.get_probe(pl_module))

    @staticmethod
    def reference_energy(probe) -> float:
        """Largest energy over the non-trivial irrep blocks on the probe's training rows."""
        b = sh.Snapshot(probe, None, None).basis
        if b.n_blocks < 2:
            return float("nan")
        E = en.irrep_max_energies(probe.x.cpu(), probe.y.cpu(), b.Q, b.block_index, probe.activation)
        return float(E[1:].max())

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sh.epoch_start(trainer, pl_module, sh.due(trainer, self.every_n_epochs))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not sh.due(trainer, self.every_n_epochs):
            return
        s = sh.snapshot(trainer, pl_module)
        E = s.energy
        m = self.compute(E)
        self.history.append({"epoch": float(trainer.current_epoch), **m})
        ratio = en.energy_ratio(E, self.E_ref) if self._has_ref() else E
        media = {}
        if trainer.is_global_zero and self.histogram and sh.has_wandb(trainer):
            wandb = sh.require_wandb()
            media["li2/energy/hist"] = wandb.Histogram(ratio.cpu().numpy())
        sh.emit(trainer, m, media)
        if trainer.is_global_zero and sh.needs_files(trainer) and sh.due(trainer, self.image_every_n_epochs):
            path = os.path.join(sh.media_dir(trainer), f"energy_hist_epoch{trainer.current_epoch:05d}.png")
            _plots.energy_histogram(ratio, trainer.current_epoch, path)

    def compute(self, E: torch.Tensor) -> dict[str, float]:
        """Scalars from the per-node energies E (K,)."""
        m = {"li2/energy/mean": float(E.mean()), "li2/energy/median": float(E.median()),
             "li2/energy/max": float(E.max())}
        if self._has_ref():
            m.update({"li2/energy/ref": self.E_ref, "li2/energy/ratio_mean": float(E.mean()) / self.E_ref,
                      "li2/energy/ratio_max": float(E.max()) / self.E_ref})
        return m

    def _has_ref(self) -> bool:
        return self.E_ref is not None and math.isfinite(self.E_ref) and self.E_ref > 0

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "E_ref": self.E_ref}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.E_ref = state_dict.get("E_ref")
