"""GFStructureMonitor: the backpropagated gradient G_F and the layers' movement (docs/theory.md §3, §5, §6)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from li2_lightning.analysis import gradients as gr
from li2_lightning.callbacks.base import Li2Callback, check_positive_int, check_unit
from li2_lightning.callbacks.snapshot import Snapshot, get_probe


class GFStructureMonitor(Li2Callback):
    """Logs the structure of G_F = −∂L/∂F and how far W and V have moved, under ``li2/``.

    Every ``every_n_epochs`` (cheap: a few passes over the (n, K) activations, no forward pass when
    the module exposes the hook point ``hook_F``):

    - ``li2/gf/align``: a_G = cos(G_F, ỸỸᵀF̃) (Stages I-II: label signal in G_F, Theorem 1).

    Every ``detail_every_n_epochs`` also:

    - ``li2/gf/norm``: ‖G_F‖ (rises, then decays; to 0 without weight decay);
    - ``li2/gf/independence``: mean|offdiag(F̃ᵀF̃)| / mean|diag| on the first ``independence_nodes`` nodes;
    - ``li2/gf/uncovered_share``: share of G_F's class profile ỸᵀG_F on irrep blocks no pure node
      holds yet (Theorem 7), next to ``li2/gf/uncovered_baseline``, the share those blocks have
      of the dimensions (what a G_F without preference gives);
    - ``li2/W/movement``, ``li2/V/movement``: ‖W − W₀‖/‖W₀‖ (W₀ at the start of training);
    - ``li2/W/step``, ``li2/V/step``: this epoch's relative change ‖W_{t+1} − W_t‖/‖W_t‖.

    Every ``heavy_every_n_epochs`` (two K × K solves and an n × n Gram matrix, float64):

    - ``li2/V/r_V``: ‖V − V*‖/‖V*‖, V* the top layer's fixed point for frozen F under the actual
      loss and η_eff (docs/theory.md §2-3); only when the probe gives ``eta_eff``;
    - ``li2/gf/align_inf``: cos(G_F, G_F at V = V*), how close G_F is to its ridge limit (Eq. 4);
    - ``li2/F/gram_distance``: ‖FFᵀ − (aI + b11ᵀ)‖/‖FFᵀ‖ on ``gram_rows`` rows (Lemma 1);
    - ``li2/gf/repulsion``: among the ``repulsion_pairs`` most similar node pairs, the share
      whose Theorem-6 coupling b_jl pushes them apart (η > 0 only).

    Args:
        every_n_epochs: cadence of the cheap observables (epochs 0, n, 2n, ... and the last).
        detail_every_n_epochs: cadence of the other cheap ones (uncovered share, W and V movement); 0: never.
        heavy_every_n_epochs: cadence of the heavy ones; 0 disables them.
        independence_nodes: nodes in the independence estimate (the first ones; 0 = all K).
        gram_rows: rows in the FFᵀ distance (seeded subset; 0 = all n).
        repulsion_pairs: most similar pairs inspected for Theorem 6.
        purity_threshold: purity from which a node counts as pure (for the covered blocks).

    Raises:
        ValueError: on a cadence or size that is not a non-negative integer, or a threshold
            outside (0, 1].
    """

    def __init__(self, every_n_epochs: int = 1, detail_every_n_epochs: int = 10, heavy_every_n_epochs: int = 100,
                 independence_nodes: int = 128, gram_rows: int = 512, repulsion_pairs: int = 128,
                 purity_threshold: float = 0.9) -> None:
        super().__init__(every_n_epochs, detail_every_n_epochs)
        check_positive_int("heavy_every_n_epochs", heavy_every_n_epochs, allow_zero=True)
        check_positive_int("independence_nodes", independence_nodes, allow_zero=True)
        check_positive_int("gram_rows", gram_rows, allow_zero=True)
        check_positive_int("repulsion_pairs", repulsion_pairs)
        check_unit("purity_threshold", purity_threshold, lo_open=True)
        self.heavy_every_n_epochs = heavy_every_n_epochs
        self.independence_nodes = independence_nodes
        self.gram_rows = gram_rows
        self.repulsion_pairs = repulsion_pairs
        self.purity_threshold = purity_threshold
        self._W0: Optional[torch.Tensor] = None
        self._V0: Optional[torch.Tensor] = None

    @override
    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "heavy_every_n_epochs": self.heavy_every_n_epochs,
                "independence_nodes": self.independence_nodes, "gram_rows": self.gram_rows,
                "repulsion_pairs": self.repulsion_pairs, "purity_threshold": self.purity_threshold}

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._W0 is None:  # not restored from a checkpoint
            probe = get_probe(pl_module)
            self._W0, self._V0 = probe.W.detach().clone(), probe.V.detach().clone()

    @override
    def scalars_due(self, trainer: Trainer) -> bool:
        return super().scalars_due(trainer) or self.due(trainer, self.heavy_every_n_epochs)

    @override
    def compute(self, s: Snapshot, trainer: Trainer) -> dict[str, float]:
        """The cheap observables, plus the detail and heavy ones when their cadences are due."""
        heavy = self.due(trainer, self.heavy_every_n_epochs)
        return self.observables(s, heavy, detail=heavy or self.detail_due(trainer))

    def observables(self, s: Snapshot, heavy: bool, detail: bool = True) -> dict[str, float]:
        """The observables of one snapshot: the cheap ones, the detail ones if ``detail``, the heavy
        ones if ``heavy``."""
        m = {"li2/gf/align": s.a_G}
        if detail:
            m.update(self._detail(s))
        if heavy:
            m.update(self._heavy(s))
        return m

    def _detail(self, s: Snapshot) -> dict[str, float]:
        covered = s.covered(self.purity_threshold)
        sizes = torch.tensor(s.basis.sizes, dtype=torch.float64)
        nontriv = sizes[1:].sum()
        m = {
            "li2/gf/norm": s.G_F_norm,
            "li2/gf/independence": s.independence(self.independence_nodes),
            "li2/gf/uncovered_share": s.uncovered_share(covered),
            "li2/gf/uncovered_baseline": (float(sizes[1:][~covered[1:].cpu()].sum() / nontriv)
                                          if nontriv > 0 else 0.0),
            "li2/W/step": gr.relative_change(s.W_post, s.W),
            "li2/V/step": gr.relative_change(s.V_post, s.V),
        }
        if self._W0 is not None:
            m["li2/W/movement"] = gr.relative_change(s.W, self._W0.to(s.W.device))
            m["li2/V/movement"] = gr.relative_change(s.V, self._V0.to(s.V.device)) if self._V0.norm() > 0 \
                else float(s.V.norm())
        return m

    def _heavy(self, s: Snapshot) -> dict[str, float]:
        m: dict[str, float] = {}
        rows = None
        if 0 < self.gram_rows < s.n:
            rows = torch.randperm(s.n, generator=torch.Generator().manual_seed(0))[: self.gram_rows]
            rows = rows.to(s.F.device)
        m["li2/F/gram_distance"] = gr.gram_isotropy_distance(s.F, rows)
        V_star = s.V_star
        if V_star is not None:
            m["li2/V/r_V"] = gr.relative_change(s.V, V_star)
            G_inf = gr.G_F_closed_form(s.F, V_star.to(s.F.dtype), s.y, s.probe.loss, s.probe.output_scale)
            m["li2/gf/align_inf"] = gr.cosine(s.G_F, G_inf)
            m["li2/gf/norm_inf"] = float(G_inf.norm())
        if s.eta is not None and s.eta > 0:
            rep = gr.repulsion(s.F, s.eta, self.repulsion_pairs, gram=s.gram, chol=s.chol)
            m["li2/gf/repulsion"] = rep["repulsion"]
        return m

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"W0": self._W0, "V0": self._V0}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._W0, self._V0 = state.get("W0"), state.get("V0")
