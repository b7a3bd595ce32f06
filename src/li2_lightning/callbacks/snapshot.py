"""The per-epoch snapshot the Li2 callbacks share, and the cache that hands it out.

Which parameters an epoch's diagnostics describe: those the epoch's training step saw. The first
due callback at ``on_train_epoch_start`` makes the :class:`SnapshotCache` copy W and V (cheap:
2M·K + K·M numbers) and, when the module exposes a :class:`~li2_lightning.hooks.HookPoint`
``hook_F``, attach a capture to it for this epoch's step. At ``on_train_epoch_end`` the first
callback to ask builds the :class:`Snapshot`: from the captured F and ∂L/∂F when there was
exactly one full-batch training pass, else (no hook point, minibatches, DDP, where a rank sees
only its shard) F and G_F are recomputed from the copies on the full training set held by the
probe, identically on every rank. Every other callback gets the same object. This matches
Li2Module's ``train/acc`` (at the parameters the step saw); ``val/acc`` is taken after the step.

The cache belongs to the callbacks of one Trainer (shared in ``setup``, see
:class:`~li2_lightning.callbacks.base.Li2Callback`): no module-global state, no flags set on
the model, and the callbacks may run in any order.
"""

from __future__ import annotations

import functools
import weakref
from typing import Optional

import torch
from lightning.pytorch import LightningModule, Trainer

from li2_lightning.analysis import energy as en
from li2_lightning.analysis import features as ft
from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis.irreps import RealIrrepBasis, fourier_blocks, real_blocks
from li2_lightning.hooks import Capture, HookPoint
from li2_lightning.probe import Li2Probe

HOOK_NAME = "hook_F"

# precisions whose backward passes an unscaled gradient to the hook (16-mixed scales the loss)
_UNSCALED = ("32-true", "64-true", "bf16-mixed", "bf16-true", "transformer-engine")


def get_probe(pl_module: LightningModule) -> Li2Probe:
    """The module's probe, or a ValueError saying how to provide one."""
    fn = getattr(pl_module, "li2_probe", None)
    if not callable(fn):
        raise ValueError(
            f"pl_module={type(pl_module).__name__} has no li2_probe() method; the Li2 callbacks "
            "need one returning li2_lightning.probe.Li2Probe (see docs/callbacks.md)")
    return fn()


def find_hook_point(pl_module: LightningModule) -> Optional[HookPoint]:
    """The module's ``hook_F`` hook point, or None (the callbacks then recompute F and G_F)."""
    point = getattr(pl_module, HOOK_NAME, None)
    return point if isinstance(point, HookPoint) else None


class SnapshotCache:
    """One :class:`Snapshot` per (trainer, epoch), shared by the Li2 callbacks of a Trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = weakref.ref(trainer)
        self._clear()

    def serves(self, trainer: Trainer) -> bool:
        return self._trainer() is trainer

    def _clear(self) -> None:
        if getattr(self, "_capture", None) is not None:
            self._capture.remove()
        self._epoch: Optional[int] = None
        self._W: Optional[torch.Tensor] = None
        self._V: Optional[torch.Tensor] = None
        self._capture: Optional[Capture] = None
        self._snap: Optional[Snapshot] = None

    def epoch_start(self, trainer: Trainer, pl_module: LightningModule, due_now: bool) -> None:
        """Prepare this epoch if a callback is due (idempotent), else drop an earlier epoch's snapshot."""
        epoch = trainer.current_epoch
        if self._epoch == epoch and (self._W is not None or not due_now):
            return
        self._clear()
        if not due_now:
            return
        probe = get_probe(pl_module)
        self._epoch, self._W, self._V = epoch, probe.W.detach().clone(), probe.V.detach().clone()
        point = find_hook_point(pl_module)
        if point is not None and trainer.world_size == 1 and str(trainer.precision) in _UNSCALED:
            self._capture = point.capture()

    def snapshot(self, trainer: Trainer, pl_module: LightningModule) -> "Snapshot":
        """The epoch's snapshot, built on the first call of the epoch."""
        if self._epoch != trainer.current_epoch:  # not prepared: describes the parameters after the step
            self._clear()
            self._epoch = trainer.current_epoch
        if self._snap is None:
            probe = get_probe(pl_module)
            F = dL_dF = None
            cap, self._capture = self._capture, None
            if cap is not None:
                cap.remove()
                if cap.calls == 1 and cap.grad is not None and cap.value.shape[0] == probe.y.shape[0]:
                    F, dL_dF = cap.value, cap.grad
            self._snap = Snapshot(probe, self._W, self._V, F, dL_dF)
        return self._snap

    def close(self) -> None:
        """Drop everything and detach from the hook point (end of fit)."""
        self._clear()


@functools.lru_cache(maxsize=16)
def _cyclic_basis(M: int) -> RealIrrepBasis:
    return fourier_blocks(M)


class Snapshot:
    """Lazily computed observables of the network as one epoch's step saw it (docs/theory.md §6).

    Attributes are computed on first access and kept; all heavy ones are opt-in.
    """

    def __init__(self, probe: Li2Probe, W_pre: Optional[torch.Tensor] = None, V_pre: Optional[torch.Tensor] = None,
                 F: Optional[torch.Tensor] = None, dL_dF: Optional[torch.Tensor] = None) -> None:
        self.probe = probe
        self.M = int(probe.M)
        self.x, self.y = probe.x, probe.y
        self.n = int(self.y.shape[0])
        self.W = (probe.W if W_pre is None else W_pre).detach()
        self.V = (probe.V if V_pre is None else V_pre).detach()
        self.W_post, self.V_post = probe.W.detach(), probe.V.detach()
        # a captured F, ∂L/∂F belong to the pre-step parameters; use them only when we hold those
        ok = F is not None and dL_dF is not None and W_pre is not None
        self.captured = bool(ok)
        self._F = F.detach() if ok else None
        self._dL_dF = dL_dF.detach() if ok else None
        self._independence: dict[int, float] = {}
        self._covered: dict[float, torch.Tensor] = {}

    # --- F, G_F -------------------------------------------------------------------------------
    @functools.cached_property
    def F(self) -> torch.Tensor:
        """(n, K) hidden activations."""
        if self._F is not None:
            return self._F
        with torch.no_grad():
            return gr.hidden(self.W, self.x, self.probe.activation)

    @functools.cached_property
    def G_F(self) -> torch.Tensor:
        """(n, K) −∂L/∂F of the whole-train-set loss."""
        if self._dL_dF is not None:
            return -self._dL_dF
        with torch.no_grad():
            return gr.G_F_closed_form(self.F, self.V.to(self.F.dtype), self.y, self.probe.loss,
                                      self.probe.output_scale)

    @functools.cached_property
    def train_acc(self) -> float:
        """Training accuracy at these parameters (one extra (n, K)·(K, M) product)."""
        with torch.no_grad():
            return float(((self.F @ self.V.to(self.F.dtype)).argmax(1) == self.y).double().mean())

    # --- G_F structure ------------------------------------------------------------------------
    @functools.cached_property
    def S(self) -> torch.Tensor:
        """ỸᵀF̃ (M, K), float64: shared by a_G and the energies."""
        return gr.class_profile(self.F, self.y, self.M)

    @property
    def _G_or_grad(self) -> torch.Tensor:
        """∂L/∂F when captured, else G_F: ±G_F without negating an (n, K) tensor (a copy)."""
        return self._dL_dF if self._dL_dF is not None else self.G_F

    @functools.cached_property
    def SG(self) -> torch.Tensor:
        """ỸᵀG_F (M, K), float64: G_F's class profile."""
        if self._dL_dF is not None:
            return -gr.class_profile(self._dL_dF, self.y, self.M)
        return gr.class_profile(self.G_F, self.y, self.M)

    @functools.cached_property
    def a_G(self) -> float:
        # with S, SG and the norm given, alignment reads nothing else from its first argument
        return gr.alignment(self._G_or_grad, self.F, self.y, self.M, S=self.S, SG=self.SG, G_norm=self.G_F_norm)

    @functools.cached_property
    def G_F_norm(self) -> float:
        return float(torch.linalg.vector_norm(self._G_or_grad))

    def independence(self, n_nodes: int) -> float:
        """Independence ratio of the first ``n_nodes`` nodes (0: all), cached per size.

        Nodes are exchangeable (i.i.d. at init, trained alike), so the first k are as good a
        sample as any, and a contiguous slice is the cheapest to read.
        """
        if n_nodes not in self._independence:
            K = self.F.shape[1]
            F = self.F if n_nodes <= 0 or n_nodes >= K else self.F[:, :n_nodes]
            self._independence[n_nodes] = gr.independence_ratio(F)
        return self._independence[n_nodes]

    # --- ridge (heavy) ------------------------------------------------------------------------
    @property
    def eta(self) -> Optional[float]:
        return self.probe.eta_eff

    @functools.cached_property
    def gram(self) -> torch.Tensor:
        """F̃ᵀF̃ (K, K), float64."""
        return gr.gram_centred(self.F)

    @functools.cached_property
    def chol(self) -> Optional[torch.Tensor]:
        """Cholesky factor of F̃ᵀF̃ + ηI (None without η > 0), shared by V* and Theorem 6."""
        return gr.ridge_cholesky(self.gram, self.eta) if self.eta else None

    @functools.cached_property
    def V_star(self) -> Optional[torch.Tensor]:
        """The top layer's fixed point for frozen F under the actual loss (None for CE / no η)."""
        if self.eta is None:
            return None
        with torch.no_grad():
            return gr.V_fixed_point(self.F, self.y, self.M, self.eta, self.probe.loss,
                                    self.probe.output_scale, gram=self.gram, chol=self.chol)

    # --- features -----------------------------------------------------------------------------
    @functools.cached_property
    def basis(self) -> RealIrrepBasis:
        g = self.probe.group
        return _cyclic_basis(self.M) if g is None else real_blocks(g.table)

    @functools.cached_property
    def power(self) -> torch.Tensor:
        """(K, 2, B) irrep power per node and operand half (mean removed), float32: enough for
        purity and coverage (``features.irrep_power``), at half the cost of float64."""
        # contiguous: the (K, 2, B) result is a permuted view, and the reductions over it that
        # purity, the dominant block and coverage make run ~3x faster on a contiguous copy
        return ft.irrep_power(self.W, self.basis, dtype=torch.float32).contiguous()

    @functools.cached_property
    def purity(self) -> torch.Tensor:
        return ft.purity(self.power)

    @functools.cached_property
    def dominant(self) -> torch.Tensor:
        return ft.dominant_irrep(self.power)

    def covered(self, threshold: float) -> torch.Tensor:
        """(B,) blocks held by a node of purity ≥ ``threshold``, cached per threshold."""
        if threshold not in self._covered:
            self._covered[threshold] = ft.covered_blocks(self.power, threshold)
        return self._covered[threshold]

    @functools.cached_property
    def matching(self) -> torch.Tensor:
        """(K,) matching score of the two operand halves (1 at an energy maximum)."""
        if all(d == 1 for d in self.basis.dims):
            return ft.abelian_matching_score(self.power)  # no complex transforms needed
        table = self.probe.group.table
        return ft.matching_score(self.W, table)

    def uncovered_share(self, covered: torch.Tensor) -> float:
        b = self.basis
        dev = self.F.device  # SG given: the function reads no other part of G_F
        return gr.uncovered_share(self._G_or_grad, self.y, b.Q.to(dev), b.block_index.to(dev), covered.to(dev),
                                  SG=self.SG)

    # --- energy -------------------------------------------------------------------------------
    @functools.cached_property
    def energy(self) -> torch.Tensor:
        """(K,) E(w_j/‖w_j‖) on the training rows, float64."""
        with torch.no_grad():
            return en.normalized_energy(self.W, self.x, self.y, self.probe.activation, F=self.F, S=self.S)
