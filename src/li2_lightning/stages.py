"""The stages of Li2 learning and the rule that detects them, as pure functions (docs/theory.md §7).

A run is first **lazy** (the top layer fits, G_F carries no label signal yet), then learns
**independent** features (G_F ≈ ỸỸᵀF̃, the nodes follow their own energy, Theorem 1), then
**interactive** ones (G_F turns to the residual and pushes nodes toward missing irreps, Theorem
7), and is **done** once every irrep is covered and the test set is solved. Without weight decay
the label signal leaves G_F before the features form: the run **stalls** in the lazy solution.

Two sets of signals. The theory's (``signal="a_G"``) reads the interactive stage and the stall
from a_G's fall, which holds for the class-centred MSE (Fig. 3, with Adam or SGD, coupled or
decoupled decay). With cross-entropy G_F = (Y − softmax)Vᵀ keeps its label alignment through
grokking (a_G stays ≈ 0.85-0.9), so the feature signals (``signal="features"``) decide instead:
interactive when purity rises and the features matter (coverage or test accuracy off chance),
done when the test set is solved, stalled only when the run is known to have no weight decay and
neither the features nor the test accuracy move over the window.

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
        a_G_signal: whether a_G's fall marks the interactive stage and the stall (MSE); False: the
            feature signals decide (cross-entropy, see the module docstring).
        weight_decay: whether the run decays its weights (None: unknown). The feature signals
            call a run stalled only when this is False.
    """

    epoch: int
    a_G: float
    independence: float
    purity: float
    coverage: float
    train_acc: Optional[float] = None
    val_acc: Optional[float] = None
    M: Optional[float] = None
    a_G_signal: bool = True
    weight_decay: Optional[bool] = None

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
        val_history: (epoch, test accuracy) of the last 2 windows (epochs with validation).
        delta_val_acc: Δ test accuracy over the window at the latest observation (None: no window
            or no validation).
    """

    peak_a_G: float = -math.inf
    resume: Optional[Stage] = None
    purity_history: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    delta_purity: Optional[float] = None
    val_history: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    delta_val_acc: Optional[float] = None


def _window(history: tuple[tuple[int, float], ...], epoch: int, value: float,
            window_epochs: int) -> tuple[tuple[int, float], ...]:
    """The history with (epoch, value) appended, cut to the last two windows."""
    return tuple((e, v) for e, v in history + ((epoch, float(value)),) if e >= epoch - 2 * window_epochs)


def delta_purity(history: tuple[tuple[int, float], ...], epoch: int, purity: float,
                 window_epochs: int) -> Optional[float]:
    """Purity now minus the latest recorded purity at least ``window_epochs`` earlier (None if none)."""
    past = [p for e, p in history if e <= epoch - window_epochs]
    return None if not past else purity - past[-1]


# --- one predicate per rule -------------------------------------------------------------------
def is_done(obs: Observation, th: Thresholds) -> bool:
    """Rule 1: coverage complete and, when the run validates, test accuracy reached.

    With the feature signals (cross-entropy) the test accuracy alone decides when there is one:
    the argmax needs a margin, not the full reconstruction of Theorem 3, so a subset of the
    irreps can solve the task (coverage 0.8 at test accuracy 0.98 on Z23).
    """
    if not obs.a_G_signal and obs.val_acc is not None:
        return obs.val_acc >= th.done_val_acc
    return (obs.coverage >= th.done_coverage) & (obs.val_acc is None or obs.val_acc >= th.done_val_acc)


def is_stalled(obs: Observation, peak: float, dp: Optional[float], th: Thresholds,
               dval: Optional[float] = None) -> bool:
    """Rule 2: a_G rose to ``align_high``, has fallen to ``stall_align`` × peak, features and test
    accuracy flat (Δ test accuracy over the window below ``generalization_gain`` × (1 − chance) / 10).

    With the feature signals: the run has no weight decay (known), the top layer fits, and over
    the window neither purity (|Δpurity| < ``purity_flat``) nor test accuracy (Δ below
    ``generalization_gain`` × (1 − chance) / 10, when validated) moves.
    """
    if dp is None:
        return False
    if not obs.a_G_signal:
        return ((obs.weight_decay is False) & fitted(obs, th) & (abs(dp) < th.purity_flat)
                & (dval is None or dval < _val_flat(obs, th)))
    # test accuracy must be flat too: a run whose test accuracy still creeps up (S4 without weight
    # decay, 0.86 -> 0.99 over 300 epochs) is slow, not stalled
    return ((peak >= th.align_high) & (obs.a_G <= th.stall_align * peak) & (abs(dp) < th.purity_flat)
            & (dval is None or dval < _val_flat(obs, th)))


def resumes(obs: Observation, peak: float, dp: Optional[float], th: Thresholds,
            dval: Optional[float] = None) -> bool:
    """A stalled run moves again: a_G back above ``stall_align`` × peak and purity rising.

    Feature signals: purity rising, or test accuracy jumping by half the ``generalization_gain``
    level within the window (five times the flat level: one test sample more or less must not
    flip a stalled run back and forth).
    """
    if dp is None:
        return False
    if not obs.a_G_signal:
        return (dp >= th.purity_flat) | (dval is not None and dval >= 5 * _val_flat(obs, th))
    return (dp >= th.purity_flat) & (obs.a_G > th.stall_align * peak)


def fitted(obs: Observation, th: Thresholds) -> bool:
    """The top layer fits the training set (train accuracy ≥ ``fit_train_acc``)."""
    return obs.train_acc is not None and obs.train_acc >= th.fit_train_acc


def _val_flat(obs: Observation, th: Thresholds) -> float:
    return th.generalization_gain * (1 - obs.chance) / 10


def features_matter(obs: Observation, th: Thresholds) -> bool:
    """Test accuracy ≥ chance + ``generalization_gain`` × (1 − chance); without validation, some
    irrep is covered. (A covered irrep alone is not enough when the test set says otherwise: with
    SGD and weight decay 0 on Z23 one frequency is covered while test accuracy stays near chance.)"""
    if obs.val_acc is None:
        return obs.coverage > 0
    chance = obs.chance
    return obs.val_acc >= chance + th.generalization_gain * (1 - chance)


def enters_independent(obs: Observation, th: Thresholds) -> bool:
    """Rule 3: the top layer fits, label signal in G_F, nodes independent."""
    if obs.train_acc is None:
        return False
    return ((obs.train_acc >= th.fit_train_acc) & (obs.a_G >= th.align_high)
            & (obs.independence <= th.independence_max))


def enters_interactive(obs: Observation, peak: float, dp: Optional[float], th: Thresholds) -> bool:
    """Rule 4: a_G left its plateau, features still forming, and they have started to matter.

    With the feature signals (``obs.a_G_signal`` False) a_G's fall is not required and any rise
    of purity over the window counts: cross-entropy nodes stay mixed (purity 0.3-0.5 at test
    accuracy 0.4 on Z23), so their purity creeps up by ~0.003 per 20 epochs.
    """
    if dp is None:
        return False
    if not obs.a_G_signal:  # a_G need not fall; purity rises slowly when nodes stay mixed (CE)
        return (dp > 0) & features_matter(obs, th)
    return (obs.a_G <= th.align_drop * peak) & (dp >= th.purity_flat) & features_matter(obs, th)


def next_stage(stage: Stage, obs: Observation, memory: Memory, th: Thresholds) -> tuple[Stage, Memory]:
    """Advance the rule by one observation: the new stage and memory (the arguments are not changed).

    Checked in this order (a run can skip a stage): done is final; rule 1 (done) from any stage;
    a stalled run resumes its earlier stage; rule 2 (stalled) from lazy, independent or
    interactive; rule 3 (lazy → independent); rule 4 (independent → interactive).
    """
    dp = delta_purity(memory.purity_history, obs.epoch, obs.purity, th.window_epochs)
    kept = _window(memory.purity_history, obs.epoch, obs.purity, th.window_epochs)
    dval, vkept = memory.delta_val_acc, memory.val_history
    if obs.val_acc is not None:
        dval = delta_purity(memory.val_history, obs.epoch, obs.val_acc, th.window_epochs)
        vkept = _window(memory.val_history, obs.epoch, obs.val_acc, th.window_epochs)
    peak = max(memory.peak_a_G, float(obs.a_G))
    mem = Memory(peak, memory.resume, kept, dp, vkept, dval)
    if stage is Stage.DONE:
        return stage, mem
    if is_done(obs, th):
        return Stage.DONE, mem
    if stage is Stage.STALLED:
        back = memory.resume if memory.resume is not None else Stage.INDEPENDENT  # LAZY is 0: falsy
        return (back if resumes(obs, peak, dp, th, dval) else stage), mem
    if is_stalled(obs, peak, dp, th, dval):
        return Stage.STALLED, replace(mem, resume=stage)
    if stage is Stage.LAZY and enters_independent(obs, th):
        return Stage.INDEPENDENT, mem
    if stage is Stage.INDEPENDENT and enters_interactive(obs, peak, dp, th):
        return Stage.INTERACTIVE, mem
    return stage, mem
