"""StageMonitor: detects the stages of Li2 learning (lazy, independent, interactive, done, stalled)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from li2_lightning.callbacks import _media
from li2_lightning.callbacks.base import Li2Callback, check_positive_int, check_unit, log_scalars, warn_missing_key
from li2_lightning.callbacks.snapshot import Snapshot
from li2_lightning.stages import Memory, Observation, Stage, Thresholds, next_stage


class StageMonitor(Li2Callback):
    """Detects lazy → independent → interactive → done (or stalled) from the observables of docs/theory.md §6.

    The observables, computed every ``every_n_epochs`` from the shared snapshot: a_G (alignment
    of G_F with ỸỸᵀF̃), the independence ratio, mean feature purity, irrep coverage by pure nodes,
    training accuracy (``train_acc_key`` from the logged metrics, else computed) and test accuracy
    (``val_acc_key``; absent when the run has no validation). A key that is not logged is warned
    about once. a_G's running maximum is its peak,
    and Δpurity is the change of mean purity over the last ``window_epochs``.

    The rule is the pure function :func:`li2_lightning.stages.next_stage` (docs/theory.md §7),
    one predicate per rule, checked in this order (a run can skip a stage):

    1. **done** when coverage ≥ ``done_coverage`` and val acc ≥ ``done_val_acc`` (if logged).
    2. **stalled** (from lazy, independent or interactive) when, after a_G has been
       ≥ ``align_high``, it falls to ≤ ``stall_align`` × peak while |Δpurity| < ``purity_flat``:
       the label signal left G_F and the features stopped changing, the lazy solution that
       weight decay 0 gives. A stalled run returns to the stage it stalled in once a_G is back
       above ``stall_align`` × peak and Δpurity ≥ ``purity_flat``.
    3. lazy → **independent** when train acc ≥ ``fit_train_acc`` (the top layer fits the training
       set), a_G ≥ ``align_high`` (label signal in G_F) and independence ≤ ``independence_max``.
    4. independent → **interactive** when a_G ≤ ``align_drop`` × peak (G_F turns from ỸỸᵀF̃
       toward the residual), Δpurity ≥ ``purity_flat`` (features keep forming), and the features
       have started to matter: val acc ≥ chance + ``generalization_gain`` · (1 − chance)
       (without validation: some irrep is covered). Without the last condition a wd = 0 run,
       whose a_G also falls while purity still creeps up, would count as interactive.

    **Which signals.** Rules 2 and 4 read a_G's fall, the theory's signal for the class-centred
    MSE with coupled (L2) or no weight decay (docs/theory.md §7). With cross-entropy a_G keeps its
    label alignment through grokking (0.8-0.9 on Z23 with AdamW while test accuracy leaves
    chance); with decoupled decay (AdamW, Muon) on the MSE a_G falls to ~0 as without weight decay
    while the run still learns. So ``signal="auto"`` switches to the feature signals for any loss
    but ``"mse"`` and for decoupled decay, and says so once: interactive
    when purity rises and test accuracy leaves chance, done when test accuracy reaches
    ``done_val_acc`` (coverage not required), stalled only when the optimizer has no weight
    decay and neither purity nor test accuracy moves over the window (an optimizer that does not
    say is never called stalled). See :func:`li2_lightning.stages.next_stage`.

    The current stage is :attr:`stage`, a :class:`~li2_lightning.stages.Stage`. Each transition
    is logged as ``stage/<to>_epoch`` and ``stage/<to>/<observable>`` (the values
    that triggered it), appended to the W&B table ``stage/transitions`` and the run summary
    (``stage/<to>_epoch``, ``stage/current``), to TensorBoard as text, and to
    ``<log_dir>/li2/stages.csv`` for loggers with a folder (CSV). ``stage/index``
    (:class:`~li2_lightning.stages.Stage`: 0 lazy, 1 independent, 2 interactive, 3 done,
    −1 stalled) is logged every logged epoch, to the logger and the progress bar in one call.

    Defaults are calibrated on Z71, K 2048, n 2016, Adam lr 1e-3 with wd 2e-4 and wd 0 (see
    docs/callbacks.md).

    Args:
        every_n_epochs: cadence of the rule (epochs 0, n, 2n, ... and the last).
        fit_train_acc: train accuracy at which the top layer counts as fitted (rule 3).
        align_high: a_G that marks label signal in G_F (rules 2, 3).
        independence_max: largest independence ratio for independent learning (rule 3).
        align_drop: a_G below this fraction of its peak has left the plateau (rule 4).
        purity_flat: |Δpurity| over the window below which features count as not changing.
        generalization_gain: test accuracy gain over chance, as a fraction of (1 − chance), at
            which the features matter (rule 4).
        done_coverage: coverage that completes the run (rule 1).
        done_val_acc: test accuracy that completes the run (rule 1).
        stall_align: a_G at or below this fraction of its peak counts as gone (rule 2).
        window_epochs: epochs over which Δpurity is taken.
        purity_threshold: purity from which a node counts as pure (for coverage).
        independence_nodes: nodes in the independence estimate (0: all).
        train_acc_key: logged metric holding train accuracy (computed when absent).
        val_acc_key: logged metric holding test accuracy (rule 1 and 4 use it when present).
        signal: ``"auto"`` (a_G for the MSE, the feature signals otherwise), ``"a_G"`` or
            ``"features"``.

    Raises:
        ValueError: on a cadence or window that is not a positive integer, a threshold outside
            its range, or an unknown ``signal``.
    """

    def __init__(self, every_n_epochs: int = 1, fit_train_acc: float = 0.99, align_high: float = 0.7,
                 independence_max: float = 0.1, align_drop: float = 0.9, purity_flat: float = 0.005,
                 generalization_gain: float = 0.1, done_coverage: float = 1.0, done_val_acc: float = 0.99,
                 stall_align: float = 0.3, window_epochs: int = 20,
                 purity_threshold: float = 0.9, independence_nodes: int = 128,
                 train_acc_key: str = "train/acc", val_acc_key: str = "val/acc", signal: str = "auto") -> None:
        super().__init__(every_n_epochs)
        if signal not in self.SIGNALS:
            raise ValueError(f"signal={signal!r} is not accepted; accepted: {list(self.SIGNALS)}")
        self.signal = signal
        check_positive_int("window_epochs", window_epochs)
        check_positive_int("independence_nodes", independence_nodes, allow_zero=True)
        check_unit("purity_threshold", purity_threshold, lo_open=True)
        self.thresholds = Thresholds(
            fit_train_acc=fit_train_acc, align_high=align_high, independence_max=independence_max,
            align_drop=align_drop, purity_flat=purity_flat, generalization_gain=generalization_gain,
            done_coverage=done_coverage, done_val_acc=done_val_acc, stall_align=stall_align,
            window_epochs=window_epochs)
        self.purity_threshold = purity_threshold
        self.independence_nodes = independence_nodes
        self.train_acc_key, self.val_acc_key = train_acc_key, val_acc_key
        self.stage = Stage.LAZY
        self.memory = Memory()
        self.transitions: list[dict[str, Any]] = []
        self._warned: set[str] = set()
        self._new_transition = False
        self._a_G_signal: Optional[bool] = None  # resolved at the first observation

    SIGNALS = ("auto", "a_G", "features")

    @override
    def settings(self) -> dict[str, Any]:
        # vars, not asdict (a deep copy): Lightning reads state_key at every hook call
        return {"every_n_epochs": self.every_n_epochs, **vars(self.thresholds),
                "purity_threshold": self.purity_threshold, "independence_nodes": self.independence_nodes,
                "train_acc_key": self.train_acc_key, "val_acc_key": self.val_acc_key, "signal": self.signal}

    # --- the rule -------------------------------------------------------------------------------
    def update(self, epoch: int, obs: dict[str, Optional[float]]) -> Optional[dict[str, Any]]:
        """Advance the rule by one logged epoch; returns the transition made, if any.

        Args:
            epoch: the epoch.
            obs: ``a_G``, ``independence``, ``purity``, ``coverage``, ``train_acc``, ``val_acc``
                (None when not logged), ``M`` (for chance level), and optionally ``a_G_signal``
                (default: as resolved from ``signal``, else True) and ``weight_decay`` (None: unknown).
        """
        a_G_signal = obs.get("a_G_signal", self._a_G_signal)
        o = Observation(epoch=epoch, a_G=float(obs["a_G"]), independence=float(obs["independence"]),
                        purity=float(obs["purity"]), coverage=float(obs["coverage"]),
                        train_acc=obs.get("train_acc"), val_acc=obs.get("val_acc"), M=obs.get("M"),
                        a_G_signal=True if a_G_signal is None else bool(a_G_signal),
                        weight_decay=obs.get("weight_decay"))
        before = self.stage
        self.stage, self.memory = next_stage(before, o, self.memory, self.thresholds)
        if self.stage == before:
            return None
        dp = self.memory.delta_purity
        t = {"epoch": epoch, "from": before.label, "to": self.stage.label, "peak_a_G": self.memory.peak_a_G,
             "delta_purity": dp if dp is not None else float("nan"),
             **{k: (float(v) if v is not None else float("nan")) for k, v in obs.items()
                if k not in ("M", "a_G_signal", "weight_decay")}}
        self.transitions.append(t)
        return t

    # --- hooks ----------------------------------------------------------------------------------
    def _resolve_signal(self, loss: str, trainer: Trainer) -> bool:
        """Whether a_G's fall is read (once per run; says so when the feature signals are used)."""
        if self._a_G_signal is None:
            decoupled = self.decoupled_decay(trainer)
            self._a_G_signal = self.signal == "a_G" or (self.signal == "auto" and loss == "mse" and not decoupled)
            if not self._a_G_signal:
                why = ("signal='features'" if self.signal == "features" else f"the loss is {loss!r}" if loss != "mse"
                       else "the weight decay is decoupled (AdamW, Muon), not the L2 term that makes the theory's ridge")
                rank_zero_info(
                    f"StageMonitor: {why}, so a_G's fall (docs/theory.md §7, derived for the MSE) does not "
                    "mark the interactive stage or the stall; the stages follow purity, coverage and "
                    f"{self.val_acc_key} instead (interactive: purity rising and test accuracy off chance; "
                    f"done: {self.val_acc_key} >= {self.thresholds.done_val_acc}; stalled: only without "
                    "weight decay, features and test accuracy flat). Set signal='a_G' to force the theory's rule.")
        return self._a_G_signal

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # W&B summary: best test accuracy, and the first epoch of each stage
        _media.define_summaries(trainer, maxima=[self.val_acc_key],
                                minima=[f"stage/{s.label}_epoch" for s in Stage if s is not Stage.LAZY])

    @staticmethod
    def decoupled_decay(trainer: Trainer) -> bool:
        """Whether some parameter group decays its weights decoupled from the gradient (AdamW,
        ``torch.optim.Muon``, or a group with ``decoupled_weight_decay``)."""
        torch_muon = getattr(torch.optim, "Muon", None)  # decays W ← W(1 − lr·wd), no flag in its groups
        for opt in trainer.optimizers:
            muon = torch_muon is not None and isinstance(opt, torch_muon)
            for g in getattr(opt, "param_groups", []):
                if float(g.get("weight_decay", 0.0)) > 0 and (muon or g.get("decoupled_weight_decay")):
                    return True
        return False

    @staticmethod
    def weight_decay(trainer: Trainer) -> Optional[bool]:
        """Whether the optimizers decay any weights (coupled or decoupled); None if they do not say."""
        seen = [g["weight_decay"] for opt in trainer.optimizers for g in getattr(opt, "param_groups", [])
                if "weight_decay" in g]
        return any(float(wd) > 0 for wd in seen) if seen else None

    def _observe(self, trainer: Trainer, s: Snapshot) -> dict[str, Optional[float]]:
        cm = trainer.callback_metrics
        if self.train_acc_key in cm:
            train_acc = float(cm[self.train_acc_key])
        else:
            warn_missing_key(self, self._warned, trainer, "train_acc_key", self.train_acc_key,
                             "train accuracy is computed from the probe instead (one more product)")
            train_acc = s.train_acc
        val_acc = None
        if self.val_acc_key in cm:
            val_acc = float(cm[self.val_acc_key])
        else:
            warn_missing_key(self, self._warned, trainer, "val_acc_key", self.val_acc_key,
                             "rule 1 (done) then uses coverage alone and rule 4 (interactive) coverage "
                             "alone as the sign that the features matter")
        covered = s.covered(self.purity_threshold)
        B = covered.shape[0]
        # only rule 3 (from lazy) reads the independence ratio; a transition fills it in for the table
        indep = s.independence(self.independence_nodes) if self.stage is Stage.LAZY else math.nan
        return {"a_G": s.a_G, "independence": indep,
                "purity": float(s.purity.mean()),
                "coverage": float(covered[1:].sum()) / (B - 1) if B > 1 else 1.0,
                "train_acc": train_acc, "val_acc": val_acc, "M": float(s.M),
                "a_G_signal": self._resolve_signal(s.probe.loss, trainer), "weight_decay": self.weight_decay(trainer)}

    @override
    def compute(self, s: Snapshot, trainer: Trainer) -> dict[str, float]:
        epoch = trainer.current_epoch
        transition = self.update(epoch, self._observe(trainer, s))
        if transition is not None and math.isnan(transition["independence"]):
            transition["independence"] = s.independence(self.independence_nodes)
        if trainer.world_size > 1:  # rank zero's decision holds everywhere, even if logged metrics differ
            state = trainer.strategy.broadcast((transition, self.extra_state()), src=0)
            transition = state[0]
            self.load_extra_state(state[1])
        m = {"stage/index": float(self.stage)}
        if transition is not None:
            m[f"stage/{self.stage.label}_epoch"] = float(epoch)
            for k in ("a_G", "independence", "purity", "coverage", "train_acc", "val_acc", "peak_a_G",
                      "delta_purity"):
                m[f"stage/{self.stage.label}/{k}"] = float(transition[k])
            self._new_transition = True
        return m

    @override
    def log_epoch(self, pl_module: LightningModule, scalars: dict[str, float]) -> None:
        """``stage/index`` to the logger and the progress bar in one call; transition keys (rare) apart."""
        rest = dict(scalars)
        log_scalars(pl_module, {"stage/index": rest.pop("stage/index")}, prog_bar=True)
        log_scalars(pl_module, rest)

    @override
    def media(self, trainer: Trainer, s: Snapshot) -> None:
        if getattr(self, "_new_transition", False):
            self._new_transition = False
            if trainer.is_global_zero:
                self._record(trainer)

    _COLUMNS = ("epoch", "from", "to", "a_G", "peak_a_G", "independence", "purity", "delta_purity",
                "coverage", "train_acc", "val_acc")

    def _record(self, trainer: Trainer) -> None:
        """The transition table to every logger (W&B table and summary, TensorBoard text, CSV file)."""
        rows = [[t.get(c) for c in self._COLUMNS] for t in self.transitions]
        summary = {f"stage/{t['to']}_epoch": t["epoch"] for t in reversed(self.transitions)}  # first wins
        _media.log_table(trainer, "stage/transitions", self._COLUMNS, rows, "stages.csv",
                         summary={**summary, "stage/current": self.stage.label})

    @override
    def extra_state(self) -> dict[str, Any]:
        mem = self.memory
        return {"stage": self.stage.label, "peak_align": mem.peak_a_G,
                "resume_stage": mem.resume.label if mem.resume is not None else None,
                "purity_history": [list(p) for p in mem.purity_history],
                "val_history": [list(p) for p in mem.val_history], "a_G_signal": self._a_G_signal,
                "transitions": [dict(t) for t in self.transitions]}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.stage = Stage.from_label(state.get("stage", "lazy"))
        resume = state.get("resume_stage")
        self.memory = replace(Memory(), peak_a_G=state.get("peak_align", Memory().peak_a_G),
                              resume=Stage.from_label(resume) if resume is not None else None,
                              purity_history=tuple((int(e), float(p)) for e, p in state.get("purity_history", [])),
                              val_history=tuple((int(e), float(p)) for e, p in state.get("val_history", [])))
        self._a_G_signal = state.get("a_G_signal")
        self.transitions = [dict(t) for t in state.get("transitions", [])]
