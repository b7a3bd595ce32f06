"""The stages of Li2 learning and the rule that detects them, as pure functions (docs/theory.md §7).

A run is first **lazy** (the top layer fits, G_F carries no label signal yet), then learns
**independent** features (G_F ≈ ỸỸᵀF̃, the nodes follow their own energy, Theorem 1), then
**interactive** ones (G_F turns to the residual and pushes nodes toward missing irreps, Theorem
7), and is **done** once every irrep is covered and the test set is solved. Without weight decay
the label signal leaves G_F before the features form: the run **stalls** in the lazy solution.

:func:`next_stage` advances the rule by one observation. It reads and returns a :class:`Memory`
(a_G's running peak, a purity window) instead of mutating an object, and each condition is its
own predicate, so the rule can be tested alone and reused, e.g. per member of a population. The
predicates combine comparisons with ``&``, which works on Python floats and elementwise on tensors.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional


class Stage(enum.IntEnum):
    """A stage; the value is what ``stage/index`` logs."""

    STALLED = -1
    LAZY = 0
    INDEPENDENT = 1
    INTERACTIVE = 2
    DONE = 3

    @property
    def label(self) -> str:
        """Lower-case name, as in logs, tables and checkpoints (``"independent"``)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "Stage":
        """The stage named ``label`` (case-insensitive).

        Raises:
            ValueError: on an unknown name.
        """
        try:
            return cls[str(label).upper()]
        except KeyError:
            raise ValueError(f"stage={label!r} is not accepted; accepted: "
                             f"{[s.label for s in cls]}") from None


@dataclass(frozen=True)
class Observation:
    """What the rule sees at one logged epoch.

    Attributes:
        epoch: the epoch.
        a_G: alignment cos(G_F, ỸỸᵀF̃).
        independence: independence ratio of F̃ᵀF̃.
        purity: mean feature purity.
        coverage: share of non-trivial irrep blocks held by a pure node.
        train_acc: training accuracy, or None if unknown.
        val_acc: test accuracy, or None when the run has no validation.
        M: group order (chance level 1/M); None means chance 0.
    """

    epoch: int
    a_G: float
    independence: float
    purity: float
    coverage: float
    train_acc: Optional[float] = None
    val_acc: Optional[float] = None
    M: Optional[float] = None

    @property
    def chance(self) -> float:
        return 1.0 / float(self.M or math.inf)


def _unit(name: str, value: Any, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (0 < value <= 1) if lo_open else (0 <= value <= 1))
    if not ok:
        raise ValueError(f"{name}={value!r} is not accepted; accepted: a number in {'(0, 1]' if lo_open else '[0, 1]'}")


@dataclass(frozen=True)
class Thresholds:
    """The settings of the rule (defaults calibrated on Z71, K 2048, n 2016; docs/callbacks.md).

    Raises:
        ValueError: naming the setting, on a value outside its range.
    """

    fit_train_acc: float = 0.99
    align_high: float = 0.7
    independence_max: float = 0.1
    align_drop: float = 0.9
    purity_flat: float = 0.005
    generalization_gain: float = 0.1
    done_coverage: float = 1.0
    done_val_acc: float = 0.99
    stall_align: float = 0.3
    window_epochs: int = 20

    def __post_init__(self) -> None:
        for name in ("fit_train_acc", "align_high", "align_drop", "generalization_gain", "done_coverage",
                     "done_val_acc", "stall_align", "purity_flat"):
            _unit(name, getattr(self, name))
        im = self.independence_max
        if isinstance(im, bool) or not isinstance(im, (int, float)) or not im > 0:
            raise ValueError(f"independence_max={im!r} is not accepted; accepted: a number > 0")
        w = self.window_epochs
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"window_epochs={w!r} is not accepted; accepted: an integer >= 1")


@dataclass(frozen=True)
class Memory:
    """What the rule carries between observations.

    Attributes:
        peak_a_G: running maximum of a_G (including the latest observation).
        resume: the stage a stalled run returns to.
        purity_history: (epoch, mean purity) of the last 2 windows.
        delta_purity: Δpurity at the latest observation (None until a window has passed).
    """

    peak_a_G: float = -math.inf
    resume: Optional[Stage] = None
    purity_history: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    delta_purity: Optional[float] = None


def delta_purity(history: tuple[tuple[int, float], ...], epoch: int, purity: float,
                 window_epochs: int) -> Optional[float]:
    """Purity now minus the latest recorded purity at least ``window_epochs`` earlier (None if none)."""
    past = [p for e, p in history if e <= epoch - window_epochs]
    return None if not past else purity - past[-1]


# --- one predicate per rule -------------------------------------------------------------------
def is_done(obs: Observation, th: Thresholds) -> bool:
    """Rule 1: coverage complete and, when the run validates, test accuracy reached."""
    return (obs.coverage >= th.done_coverage) & (obs.val_acc is None or obs.val_acc >= th.done_val_acc)


def is_stalled(obs: Observation, peak: float, dp: Optional[float], th: Thresholds) -> bool:
    """Rule 2: a_G rose to ``align_high``, has fallen to ``stall_align`` × peak, features flat."""
    if dp is None:
        return False
    return (peak >= th.align_high) & (obs.a_G <= th.stall_align * peak) & (abs(dp) < th.purity_flat)


def resumes(obs: Observation, peak: float, dp: Optional[float], th: Thresholds) -> bool:
    """A stalled run moves again: a_G back above ``stall_align`` × peak and purity rising."""
    if dp is None:
        return False
    return (dp >= th.purity_flat) & (obs.a_G > th.stall_align * peak)


def enters_independent(obs: Observation, th: Thresholds) -> bool:
    """Rule 3: the top layer fits, label signal in G_F, nodes independent."""
    if obs.train_acc is None:
        return False
    return ((obs.train_acc >= th.fit_train_acc) & (obs.a_G >= th.align_high)
            & (obs.independence <= th.independence_max))


def enters_interactive(obs: Observation, peak: float, dp: Optional[float], th: Thresholds) -> bool:
    """Rule 4: a_G left its plateau, features still forming, and they have started to matter."""
    if dp is None:
        return False
    chance = obs.chance
    mattering = (obs.coverage > 0) or (obs.val_acc is not None
                                       and obs.val_acc >= chance + th.generalization_gain * (1 - chance))
    return (obs.a_G <= th.align_drop * peak) & (dp >= th.purity_flat) & mattering


def next_stage(stage: Stage, obs: Observation, memory: Memory, th: Thresholds) -> tuple[Stage, Memory]:
    """Advance the rule by one observation: the new stage and memory (the arguments are not changed).

    Checked in this order (a run can skip a stage): done is final; rule 1 (done) from any stage;
    a stalled run resumes its earlier stage; rule 2 (stalled) from lazy, independent or
    interactive; rule 3 (lazy → independent); rule 4 (independent → interactive).
    """
    dp = delta_purity(memory.purity_history, obs.epoch, obs.purity, th.window_epochs)
    kept = tuple((e, p) for e, p in memory.purity_history + ((obs.epoch, obs.purity),)
                 if e >= obs.epoch - 2 * th.window_epochs)
    peak = max(memory.peak_a_G, float(obs.a_G))
    mem = Memory(peak, memory.resume, kept, dp)
    if stage is Stage.DONE:
        return stage, mem
    if is_done(obs, th):
        return Stage.DONE, mem
    if stage is Stage.STALLED:
        back = memory.resume if memory.resume is not None else Stage.INDEPENDENT  # LAZY is 0: falsy
        return (back if resumes(obs, peak, dp, th) else stage), mem
    if is_stalled(obs, peak, dp, th):
        return Stage.STALLED, replace(mem, resume=stage)
    if stage is Stage.LAZY and enters_independent(obs, th):
        return Stage.INDEPENDENT, mem
    if stage is Stage.INDEPENDENT and enters_interactive(obs, peak, dp, th):
        return Stage.INTERACTIVE, mem
    return stage, mem
