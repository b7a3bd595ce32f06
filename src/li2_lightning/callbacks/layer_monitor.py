"""LayerMonitor: per-layer Li2 observables of deeper, complex or ridge-topped nets (docs/theory.md §10)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from li2_lightning.analysis import features as ft
from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis import layers as ly
from li2_lightning.callbacks.base import Li2Callback, check_unit
from li2_lightning.callbacks.snapshot import Snapshot


class LayerMonitor(Li2Callback):
    """Logs, for every hidden layer l = 1..L of the module's net, under ``li2/layer{l}/``:

    - ``align``: a_l = cos(G_l, ỸỸᵀF̃_l), G_l = −∂L/∂F_l (``analysis.layers.layer_alignment``);
    - ``G_norm``: ‖G_l‖;
    - ``move``: ‖θ_l − θ_l(0)‖ / ‖θ_l(0)‖ for the layer's weight (W for l = 1, U_l above; ``li2/layer_top/move``
      for V);
    - ``purity``, ``coverage``: the class-profile feature measure of layer l (``analysis.layers.profile_*``):
      how purely each node's mean output over the classes h1·h2 sits in one irrep block, and the share of
      blocks held by a node of purity ≥ ``purity_threshold``;
    - for l = 1 also ``W_purity`` and ``W_coverage``: the first layer's weight purity and coverage
      (``analysis.features``, as ``FeatureMonitor``; complex W as [Re W, Im W]);
    - ``stage/layer{l}_onset``: the first epoch at which the layer's ``purity`` exceeded its first
      measured value by ``onset_gain`` (the layer leaves the lazy stage), −1 until then. The paper
      expects the onsets in bottom-up order.

    The module must expose its net as ``pl_module.net`` with :meth:`~li2_lightning.nets.TwoLayerNet.
    layer_weights`, ``activation``, ``residual`` and ``output_scale`` (``Li2Module`` does), and the
    Li2 probe (training rows, loss, group). Values describe the parameters after the epoch's step.

    Args:
        every_n_epochs: cadence (epochs 0, n, 2n, ... and the last).
        purity_threshold: purity at which a node counts as holding its block (coverage).
        onset_gain: rise of a layer's purity over its first value that marks its onset.

    Raises:
        ValueError: on a cadence < 1 or a threshold or gain outside (0, 1].
    """

    def __init__(self, every_n_epochs: int = 10, purity_threshold: float = 0.9, onset_gain: float = 0.1) -> None:
        super().__init__(every_n_epochs)
        check_unit("purity_threshold", purity_threshold, lo_open=True)
        check_unit("onset_gain", onset_gain, lo_open=True)
        self.purity_threshold, self.onset_gain = float(purity_threshold), float(onset_gain)
        self._init: Optional[list[torch.Tensor]] = None
        self.first_purity: dict[int, float] = {}
        self.onsets: dict[int, int] = {}

    @override
    def settings(self) -> dict[str, Any]:
        return {"every_n_epochs": self.every_n_epochs, "purity_threshold": self.purity_threshold,
                "onset_gain": self.onset_gain}

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._init is None:  # a resumed run keeps the initial weights from its checkpoint
            self._init = [w.detach().clone() for w in _net(pl_module).layer_weights()]

    @override
    def compute(self, s: Snapshot, trainer: Trainer) -> dict[str, float]:
        net = _net(trainer.lightning_module)
        probe, epoch = s.probe, int(trainer.current_epoch)
        weights = [w.detach() for w in net.layer_weights()]  # W, U_2..U_L, V
        Fs, Gs = ly.layer_gradients(weights[0], weights[1:-1], weights[-1], probe.x, probe.y, net.activation,
                                    net.residual, probe.loss, net.output_scale)
        basis = s.basis
        out: dict[str, float] = {}
        for l, (F, G) in enumerate(zip(Fs, Gs), start=1):
            key = f"li2/layer{l}"
            power = ly.profile_power(F, probe.y, basis)
            purity = float(ly.profile_purity(power).mean())
            out[f"{key}/align"] = ly.layer_alignment(G, F, probe.y, s.M)
            out[f"{key}/G_norm"] = float(torch.linalg.vector_norm(G))
            out[f"{key}/purity"] = purity
            out[f"{key}/coverage"] = ly.profile_coverage(power, self.purity_threshold)
            if self._init is not None:
                out[f"{key}/move"] = gr.relative_change(weights[l - 1], self._init[l - 1])
            self.first_purity.setdefault(l, purity)
            if l not in self.onsets and purity - self.first_purity[l] >= self.onset_gain:
                self.onsets[l] = epoch
            out[f"stage/layer{l}_onset"] = float(self.onsets.get(l, -1))
        if self._init is not None:
            out["li2/layer_top/move"] = gr.relative_change(weights[-1], self._init[-1])
        Wp = ft.irrep_power(ly.as_real(weights[0]), basis)
        out["li2/layer1/W_purity"] = float(ft.purity(Wp).mean())
        out["li2/layer1/W_coverage"] = ft.coverage(Wp, self.purity_threshold)
        return out

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"init": self._init, "first_purity": dict(self.first_purity), "onsets": dict(self.onsets)}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._init = state.get("init")
        self.first_purity = dict(state.get("first_purity", {}))
        self.onsets = dict(state.get("onsets", {}))


def _net(pl_module: LightningModule):
    net = getattr(pl_module, "net", None)
    if net is None or not hasattr(net, "layer_weights"):
        raise ValueError(f"LayerMonitor needs a module with a `net` that has layer_weights() (as Li2Module); "
                         f"{type(pl_module).__name__} has none")
    return net
