"""StageMonitor: detects the stages of Li2 learning (lazy, independent, interactive, done, stalled)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from li2_lightning.callbacks import _shared as sh

STAGES = ("lazy", "independent", "interactive", "done", "stalled")
STAGE_INDEX = {"lazy": 0, "independent": 1, "interactive": 2, "done": 3, "stalled": -1}


class StageMonitor(Callback):
    """Detects lazy → independent → interactive → done (or stalled) from the SPEC §6 observables.

    The observables, computed every ``every_n_epochs`` from the shared snapshot: a_G (alignment
    of G_F with ỸỸᵀF̃), the independence ratio, mean feature purity, irrep coverage by pure nodes,
    training accuracy (``train_acc_key`` from the logged metrics, else computed) and test accuracy
    (``val_acc_key``; absent when the run has no validation). a_G's running maximum is its peak,
    and Δpurity is the change of mean purity over the last ``window_epochs``.

    The rule (checked in this order; a run can skip a stage):

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
       have started to matter: val acc ≥ chance + ``generalization_gain`` · (1 − chance), or
       some irrep is covered. Without the last condition a wd = 0 run, whose a_G also falls while
       purity still creeps up, would count as interactive.

    Each transition is logged as ``stage/<to>_epoch`` and ``stage/<to>/<observable>`` (the values
    that triggered it), appended to the W&B table ``stage/transitions`` and the run summary
    (``stage/<to>_epoch``, ``stage/current``), or to ``<log_dir>/li2/stages.csv`` for other
    loggers. ``stage/index`` (0 lazy, 1 independent, 2 interactive, 3 done, −1 stalled) is logged
    every logged epoch, and as ``stage`` in the progress bar every epoch.

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

    Raises:
        ValueError: on a cadence or window that is not a positive integer, or a threshold outside
            its range.
    """

    def __init__(self, every_n_epochs: int = 1, fit_train_acc: float = 0.99, align_high: float = 0.7,
                 independence_max: float = 0.1, align_drop: float = 0.9, purity_flat: float = 0.005,
                 generalization_gain: float = 0.1, done_coverage: float = 1.0, done_val_acc: float = 0.99,
                 stall_align: float = 0.3, window_epochs: int = 20,
                 purity_threshold: float = 0.9, independence_nodes: int = 128,
                 train_acc_key: str = "train/acc", val_acc_key: str = "val/acc") -> None:
        sh.check_positive_int("every_n_epochs", every_n_epochs)
        sh.check_positive_int("window_epochs", window_epochs)
        sh.check_positive_int("independence_nodes", independence_nodes, allow_zero=True)
        for name, value in [("fit_train_acc", fit_train_acc), ("align_high", align_high),
                            ("align_drop", align_drop), ("generalization_gain", generalization_gain),
                            ("done_coverage", done_coverage), ("done_val_acc", done_val_acc),
                            ("stall_align", stall_align), ("purity_flat", purity_flat)]:
            sh.check_unit(name, value)
        sh.check_unit("purity_threshold", purity_threshold, lo_open=True)
        if not (isinstance(independence_max, (int, float)) and independence_max > 0):
            raise ValueError(f"independence_max={independence_max!r} is not accepted; accepted: a number > 0")
        self.every_n_epochs = every_n_epochs
        self.fit_train_acc, self.align_high, self.independence_max = fit_train_acc, align_high, independence_max
        self.align_drop, self.purity_flat = align_drop, purity_flat
        self.generalization_gain = generalization_gain
        self.done_coverage, self.done_val_acc = done_coverage, done_val_acc
        self.stall_align = stall_align
        self.window_epochs, self.purity_threshold = window_epochs, purity_threshold
        self.independence_nodes = independence_nodes
        self.train_acc_key, self.val_acc_key = train_acc_key, val_acc_key
        self.stage = "lazy"
        self.peak_align = -math.inf
        self.resume_stage: Optional[str] = None  # stage a stalled run returns to
        self.purity_history: list[tuple[int, float]] = []
        self.transitions: list[dict[str, Any]] = []

    # --- the rule -------------------------------------------------------------------------------
    def _delta_purity(self, epoch: int, purity: float) -> Optional[float]:
        past = [p for e, p in self.purity_history if e <= epoch - self.window_epochs]
        return None if not past else purity - past[-1]

    def update(self, epoch: int, obs: dict[str, Optional[float]]) -> Optional[dict[str, Any]]:
        """Advance the rule by one logged epoch; returns the transition made, if any.

        Args:
            epoch: the epoch.
            obs: ``a_G``, ``independence``, ``purity``, ``coverage``, ``train_acc``, ``val_acc``
                (None when not logged) and ``M`` (for chance level).
        """
        a, purity = float(obs["a_G"]), float(obs["purity"])
        dp = self._delta_purity(epoch, purity)
        self.purity_history.append((epoch, purity))
        self.purity_history = [(e, p) for e, p in self.purity_history if e >= epoch - 2 * self.window_epochs]
        self.peak_align = max(self.peak_align, a)
        val, cov = obs.get("val_acc"), float(obs["coverage"])
        chance = 1.0 / float(obs.get("M") or math.inf)
        before = self.stage
        new = before
        if before == "done":
            return None
        if cov >= self.done_coverage and (val is None or val >= self.done_val_acc):
            new = "done"
        elif before == "stalled":
            if dp is not None and dp >= self.purity_flat and a > self.stall_align * self.peak_align:
                new = self.resume_stage or "independent"
        elif (self.peak_align >= self.align_high and a <= self.stall_align * self.peak_align
              and dp is not None and abs(dp) < self.purity_flat):
            new, self.resume_stage = "stalled", before
        elif before == "lazy":
            if (obs["train_acc"] is not None and obs["train_acc"] >= self.fit_train_acc
                    and a >= self.align_high and obs["independence"] <= self.independence_max):
                new = "independent"
        elif before == "independent":
            mattering = cov > 0 or (val is not None and val >= chance + self.generalization_gain * (1 - chance))
            rising = dp is not None and dp >= self.purity_flat
            if a <= self.align_drop * self.peak_align and rising and mattering:
                new = "interactive"
        if new == before:
            return None
        self.stage = new
        t = {"epoch": epoch, "from": before, "to": new, "peak_a_G": self.peak_align,
             "delta_purity": dp if dp is not None else float("nan"),
             **{k: (float(v) if v is not None else float("nan")) for k, v in obs.items() if k != "M"}}
        self.transitions.append(t)
        return t

    # --- hooks ----------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sh.epoch_start(trainer, pl_module, sh.due(trainer, self.every_n_epochs))

    def _observe(self, trainer: Trainer, s: "sh.Snapshot") -> dict[str, Optional[float]]:
        cm = trainer.callback_metrics
        train_acc = float(cm[self.train_acc_key]) if self.train_acc_key in cm else s.train_acc
        val_acc = float(cm[self.val_acc_key]) if self.val_acc_key in cm else None
        covered = s.covered(self.purity_threshold)
        B = covered.shape[0]
        return {"a_G": s.a_G, "independence": s.independence(self.independence_nodes),
                "purity": float(s.purity.mean()),
                "coverage": float(covered[1:].sum()) / (B - 1) if B > 1 else 1.0,
                "train_acc": train_acc, "val_acc": val_acc, "M": float(s.M)}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if sh.due(trainer, self.every_n_epochs):
            s = sh.snapshot(trainer, pl_module)
            epoch = trainer.current_epoch
            transition = self.update(epoch, self._observe(trainer, s))
            if trainer.world_size > 1:  # rank zero's decision holds everywhere, even if logged metrics differ
                state = trainer.strategy.broadcast((transition, self.state_dict()), src=0)
                transition = state[0]
                self.load_state_dict(state[1])
            m = {"stage/index": float(STAGE_INDEX[self.stage])}
            if transition is not None:
                m[f"stage/{self.stage}_epoch"] = float(epoch)
                for k in ("a_G", "independence", "purity", "coverage", "train_acc", "val_acc", "peak_a_G",
                          "delta_purity"):
                    m[f"stage/{self.stage}/{k}"] = float(transition[k])
            sh.emit(trainer, m)
            if transition is not None and trainer.is_global_zero:
                self._record(trainer)
        pl_module.log("stage", float(STAGE_INDEX[self.stage]), prog_bar=True, logger=False,
                      on_step=False, on_epoch=True)

    _COLUMNS = ("epoch", "from", "to", "a_G", "peak_a_G", "independence", "purity", "delta_purity",
                "coverage", "train_acc", "val_acc")

    def _record(self, trainer: Trainer) -> None:
        """Transition table and summary to W&B, or a CSV file next to the run."""
        rows = [[t.get(c) for c in self._COLUMNS] for t in self.transitions]
        if sh.has_wandb(trainer):
            wandb = sh.require_wandb()
            from lightning.pytorch.loggers import WandbLogger

            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):
                    lg.experiment.log({"stage/transitions": wandb.Table(columns=list(self._COLUMNS), data=rows),
                                       "trainer/global_step": trainer.global_step})
                    for t in self.transitions:
                        lg.experiment.summary[f"stage/{t['to']}_epoch"] = t["epoch"]
                    lg.experiment.summary["stage/current"] = self.stage
        if sh.needs_files(trainer):
            path = os.path.join(sh.media_dir(trainer), "stages.csv")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self._COLUMNS)
                w.writerows(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "peak_align": self.peak_align, "resume_stage": self.resume_stage,
                "purity_history": list(self.purity_history), "transitions": [dict(t) for t in self.transitions]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage = state_dict.get("stage", "lazy")
        self.peak_align = state_dict.get("peak_align", -math.inf)
        self.resume_stage = state_dict.get("resume_stage")
        self.purity_history = [tuple(p) for p in state_dict.get("purity_history", [])]
        self.transitions = [dict(t) for t in state_dict.get("transitions", [])]
