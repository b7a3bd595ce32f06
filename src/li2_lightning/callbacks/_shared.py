"""What the Li2 callbacks share: one snapshot of the network per logged epoch, and the logging path.

Every Li2 callback due at an epoch calls :func:`prepare` in ``on_train_epoch_start`` and
:func:`snapshot` in ``on_train_epoch_end``. The first call of an epoch does the work; the others
reuse it, so four callbacks cost one set of computations.

Which parameters an epoch's diagnostics describe: those the epoch's training step saw. ``prepare``
copies W and V before the step (cheap: 2M·K + K·M numbers) and asks a module that supports it to
keep F and G_F of the step (``li2_capture``). At the end of the epoch, the captured F and G_F are
used with those copies, or, when the module captured nothing or under DDP (each rank captured
only its shard), F and G_F are recomputed from the copies on the full training set held by the
probe, identically on every rank. This matches Li2Module's ``train/acc`` (taken at the parameters
the step saw); ``val/acc`` is evaluated after the step.
"""

from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from li2_lightning.analysis import energy as en
from li2_lightning.analysis import features as ft
from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis.irreps import RealIrrepBasis, fourier_blocks, real_blocks
from li2_lightning.probe import Li2Probe


def get_probe(pl_module: LightningModule) -> Li2Probe:
    """The module's probe, or a ValueError saying how to provide one."""
    fn = getattr(pl_module, "li2_probe", None)
    if not callable(fn):
        raise ValueError(
            f"pl_module={type(pl_module).__name__} has no li2_probe() method; the Li2 callbacks "
            "need one returning li2_lightning.probe.Li2Probe (see docs/callbacks.md)")
    return fn()


@dataclass
class _EpochState:
    epoch: int
    W_pre: Optional[torch.Tensor] = None
    V_pre: Optional[torch.Tensor] = None
    snap: Optional["Snapshot"] = None


_STATE: "weakref.WeakKeyDictionary[Trainer, _EpochState]" = weakref.WeakKeyDictionary()


def prepare(trainer: Trainer, pl_module: LightningModule) -> None:
    """Copy W, V before this epoch's step and ask the module to capture F and G_F (idempotent)."""
    st = _STATE.get(trainer)
    if st is not None and st.epoch == trainer.current_epoch and st.W_pre is not None:
        return
    probe = get_probe(pl_module)
    _STATE[trainer] = _EpochState(trainer.current_epoch, probe.W.detach().clone(), probe.V.detach().clone())
    if hasattr(pl_module, "li2_capture"):
        pl_module.li2_capture = True


def release(trainer: Trainer) -> None:
    """Drop an earlier epoch's snapshot (its F and G_F are n × K each) at a non-logged epoch."""
    st = _STATE.get(trainer)
    if st is not None and st.epoch != trainer.current_epoch:
        del _STATE[trainer]


def epoch_start(trainer: Trainer, pl_module: LightningModule, due_now: bool) -> None:
    """What every Li2 callback does in ``on_train_epoch_start``: prepare if due, else release."""
    if due_now:
        prepare(trainer, pl_module)
    else:
        release(trainer)


def snapshot(trainer: Trainer, pl_module: LightningModule) -> "Snapshot":
    """The epoch's :class:`Snapshot`, built on the first call of the epoch."""
    st = _STATE.get(trainer)
    if st is None or st.epoch != trainer.current_epoch:
        st = _STATE[trainer] = _EpochState(trainer.current_epoch)
    if st.snap is None:
        probe = get_probe(pl_module)
        if hasattr(pl_module, "li2_capture"):
            pl_module.li2_capture = False
        st.snap = Snapshot(probe, st.W_pre, st.V_pre, trainer.world_size)
    return st.snap


@functools.lru_cache(maxsize=16)
def _cyclic_basis(M: int) -> RealIrrepBasis:
    return fourier_blocks(M)


class Snapshot:
    """Lazily computed observables of one state of the network (see the module docstring).

    Attributes are computed on first access and kept; all heavy ones are opt-in.
    """

    def __init__(self, probe: Li2Probe, W_pre: Optional[torch.Tensor], V_pre: Optional[torch.Tensor],
                 world_size: int = 1) -> None:
        self.probe = probe
        self.M = int(probe.M)
        self.x, self.y = probe.x, probe.y
        self.n = int(self.y.shape[0])
        self.W = (probe.W if W_pre is None else W_pre).detach()
        self.V = (probe.V if V_pre is None else V_pre).detach()
        self.W_post, self.V_post = probe.W.detach(), probe.V.detach()
        # captured F, G_F belong to the pre-step parameters; use them only when we hold those
        ok = probe.F is not None and probe.G_F is not None and W_pre is not None and world_size == 1
        self.captured = bool(ok)
        self._F = probe.F.detach() if ok else None
        self._G_F = probe.G_F.detach() if ok else None
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
        if self._G_F is not None:
            return self._G_F
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

    @functools.cached_property
    def SG(self) -> torch.Tensor:
        """ỸᵀG_F (M, K), float64: G_F's class profile."""
        return gr.class_profile(self.G_F, self.y, self.M)

    @functools.cached_property
    def a_G(self) -> float:
        return gr.alignment(self.G_F, self.F, self.y, self.M, S=self.S, SG=self.SG, G_norm=self.G_F_norm)

    @functools.cached_property
    def G_F_norm(self) -> float:
        return float(torch.linalg.vector_norm(self.G_F))

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
        """(K, 2, B) irrep power per node and operand half (mean removed), float64."""
        return ft.irrep_power(self.W, self.basis)

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
        return gr.uncovered_share(self.G_F, self.y, b.Q.to(self.G_F.device), b.block_index.to(self.G_F.device),
                                  covered.to(self.G_F.device), SG=self.SG)

    # --- energy -------------------------------------------------------------------------------
    @functools.cached_property
    def energy(self) -> torch.Tensor:
        """(K,) E(w_j/‖w_j‖) on the training rows, float64."""
        with torch.no_grad():
            return en.normalized_energy(self.W, self.x, self.y, self.probe.activation, F=self.F, S=self.S)


def due(trainer: Trainer, every_n_epochs: int) -> bool:
    """Whether a callback with this cadence acts at the current epoch (never in sanity checks).

    Due at epochs 0, n, 2n, ... and at the last epoch of ``max_epochs``. 0 disables.
    """
    if trainer.sanity_checking or every_n_epochs <= 0:
        return False
    e = trainer.current_epoch
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and e == trainer.max_epochs - 1
    return e % every_n_epochs == 0 or last


def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    """ValueError naming ``name`` unless value is an int ≥ 1 (≥ 0 with ``allow_zero``)."""
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        extra = " (0 disables)" if allow_zero else ""
        raise ValueError(f"{name}={value!r} is not accepted; accepted: an integer >= {lo}{extra}")


def check_unit(name: str, value: Any, lo_open: bool = False) -> None:
    """ValueError naming ``name`` unless value is a number in [0, 1] ((0, 1] with ``lo_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (0 < value <= 1) if lo_open else (0 <= value <= 1))
    if not ok:
        rng = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"{name}={value!r} is not accepted; accepted: a number in {rng}")


def has_wandb(trainer: Trainer) -> bool:
    return any(isinstance(lg, WandbLogger) for lg in trainer.loggers)


def needs_files(trainer: Trainer) -> bool:
    """Whether media should go to PNG files: there is a logger other than W&B (none: no files)."""
    return any(not isinstance(lg, WandbLogger) for lg in trainer.loggers)


def media_dir(trainer: Trainer) -> str:
    """Folder for PNG media: ``<log_dir>/li2`` of the first non-W&B logger (``<default_root_dir>/li2``
    if it has no folder)."""
    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger):
            d = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
            if d:
                return os.path.join(d, "li2")
    return os.path.join(trainer.default_root_dir, "li2")


def emit(trainer: Trainer, scalars: dict[str, float], wandb_media: Optional[dict] = None) -> None:
    """Log ``scalars`` (plus W&B-only media) once per logger, from rank zero.

    W&B gets one ``experiment.log`` row holding the scalars and media; other loggers one
    ``log_metrics`` call. ``epoch`` is added so rows can be keyed by epoch.
    """
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    scalars = {**scalars, "epoch": float(trainer.current_epoch)}
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.log({**scalars, **(wandb_media or {}), "trainer/global_step": step})
        else:
            lg.log_metrics(scalars, step=step)


def require_wandb():
    """Import wandb, or say how to get it (the W&B media and tables need it)."""
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency of the package
        raise ModuleNotFoundError(
            "the Li2 callbacks' W&B histograms, images and tables need wandb: `pip install wandb`, "
            "or use a logger other than WandbLogger (images are then written as PNG files)") from err
    return wandb
