"""EnergyMonitor: each hidden node's energy E(w_j/‖w_j‖) against exact maxima (docs/theory.md §4, §6)."""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from li2_lightning.analysis import energy as en
from li2_lightning.callbacks import _media, _plots
from li2_lightning.callbacks.base import Li2Callback, check_positive_int
from li2_lightning.callbacks.snapshot import Snapshot, get_probe


class EnergyMonitor(Li2Callback):
    """Logs the per-node energy of Stage II on the training rows, under ``li2/energy/``.

    E(w) = ½‖Ỹᵀσ(Xw)‖² (Theorem 1) is evaluated for every node on the unit sphere, w_j/‖w_j‖,
    and compared with exact maxima found once at the start of training by projected gradient
    ascent inside each irrep block (Theorem 2's maxima have both operand halves in one block):

    - ``li2/energy/ratio_mean``, ``ratio_max``: E_j over the maximum of node j's own dominant
      block (``analysis.energy.block_energy_ratio``); 1 = every node exactly on the maximum of
      the irrep it holds. Nodes without a dominant block are left out.
    - ``li2/energy/ref``: the largest of the block maxima, and ``ratio_group_mean``,
      ``ratio_group_max``: E_j over it (the whole-group ratio; irreps with a lower maximum, e.g.
      a complex pair of Z_M against the real one, stay below 1 at their own maximum). With scarce
      data memorisation maxima can exceed 1 (docs/theory.md §4).

    Every ``every_n_epochs``: ``li2/energy/ratio_mean`` (``li2/energy/mean`` without the reference).
    Every ``detail_every_n_epochs`` the other keys, ``li2/energy/mean``, ``median`` and ``max``, and the
    histogram ``li2/energy/hist`` of the per-block ratios (on W&B and TensorBoard). Every
    ``image_every_n_epochs``, for the loggers without histograms (CSV), that histogram as a PNG in
    ``<log_dir>/li2/energy_hist_epoch{epoch}.png``.

    Args:
        every_n_epochs: cadence of the keys users monitor (epochs 0, n, 2n, ... and the last).
        detail_every_n_epochs: cadence of the other keys and the histogram; 0: never.
        image_every_n_epochs: cadence of the PNG histogram for non-W&B loggers; 0 disables.
        histogram: log the histogram (W&B, TensorBoard) every ``detail_every_n_epochs``.
        reference: compute the block maxima and the ratios (about a second at the start for Z71).

    Raises:
        ValueError: on a cadence that is not a non-negative integer.
    """

    def __init__(self, every_n_epochs: int = 1, detail_every_n_epochs: int = 10, image_every_n_epochs: int = 50,
                 histogram: bool = True, reference: bool = True) -> None:
        super().__init__(every_n_epochs, detail_every_n_epochs)
        check_positive_int("image_every_n_epochs", image_every_n_epochs, allow_zero=True)
        self.image_every_n_epochs = image_every_n_epochs
        self.histogram = bool(histogram)
        self.reference = bool(reference)
        self.E_ref: Optional[float] = None
        self.E_block: Optional[list[float]] = None  # (B,) maximum per irrep block

    @override
    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "image_every_n_epochs": self.image_every_n_epochs,
                "histogram": self.histogram, "reference": self.reference}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.reference and self.E_block is None:
            E = self.block_energies(get_probe(pl_module))
            self.E_block = [float(e) for e in E]
            self.E_ref = float(E[1:].max()) if len(E) > 1 else float("nan")

    @staticmethod
    def block_energies(probe) -> torch.Tensor:
        """(B,) largest energy inside each irrep block on the probe's training rows (block 0: trivial)."""
        b = Snapshot(probe).basis
        return en.irrep_max_energies(probe.x.cpu(), probe.y.cpu(), b.Q, b.block_index, probe.activation)

    @staticmethod
    def reference_energy(probe) -> float:
        """Largest energy over the non-trivial irrep blocks on the probe's training rows."""
        E = EnergyMonitor.block_energies(probe)
        return float(E[1:].max()) if len(E) > 1 else float("nan")

    @override
    def compute(self, s: Snapshot, trainer: Optional[Trainer]) -> dict[str, float]:
        E = s.energy
        detail = trainer is None or self.detail_due(trainer)  # no trainer: every key
        m = {}
        if detail or not self._has_ref():
            m["li2/energy/mean"] = float(E.mean())
        if detail:
            m.update({"li2/energy/median": float(E.median()), "li2/energy/max": float(E.max())})
        if self._has_ref():
            r = self.block_ratio(s)
            r = r[~r.isnan()]
            m["li2/energy/ratio_mean"] = float(r.mean()) if len(r) else float("nan")
            if detail:
                m.update({"li2/energy/ref": self.E_ref,
                          "li2/energy/ratio_max": float(r.max()) if len(r) else float("nan"),
                          "li2/energy/ratio_group_mean": m["li2/energy/mean"] / self.E_ref,
                          "li2/energy/ratio_group_max": m["li2/energy/max"] / self.E_ref})
        return m

    def block_ratio(self, s: Snapshot) -> torch.Tensor:
        """(K,) per-node energy over its dominant block's maximum (NaN: no dominant block)."""
        E_block = torch.tensor(self.E_block, dtype=torch.float64)
        return en.block_energy_ratio(s.energy, s.dominant, E_block)

    @override
    def media(self, trainer: Trainer, s: Snapshot) -> None:
        if not trainer.is_global_zero:
            return
        hist_due = self.histogram and self.detail_due(trainer) and _media.has_native(trainer)
        png_due = bool(_media.file_loggers(trainer)) and self.due(trainer, self.image_every_n_epochs)
        if not (hist_due or png_due):
            return
        ratio = self.block_ratio(s) if self._has_ref() else s.energy
        ratio = ratio[~ratio.isnan()].cpu().numpy()
        if hist_due:
            _media.log_histogram(trainer, "li2/energy/hist", ratio)
        if png_due:
            path = os.path.join(_media.media_dir(trainer), f"energy_hist_epoch{trainer.current_epoch:05d}.png")
            _plots.energy_histogram(torch.from_numpy(ratio), trainer.current_epoch, path)

    def _has_ref(self) -> bool:
        return (self.E_block is not None and self.E_ref is not None and math.isfinite(self.E_ref)
                and self.E_ref > 0)

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"E_ref": self.E_ref, "E_block": self.E_block}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.E_ref = state.get("E_ref")
        self.E_block = state.get("E_block")
