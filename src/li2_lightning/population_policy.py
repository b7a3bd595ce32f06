"""Stages per member of a population, and the policy that stops members that are done or stalled.

A sweep point is worth training only until its outcome is known. The stage rule of
docs/theory.md §7 (:func:`li2_lightning.stages.next_stage`) tells when: a member that reached
**done** (every irrep covered, test set solved) has grokked; one that has been **stalled** (the
label signal left G_F and the features stopped moving, the lazy solution of weight decay 0) for
``confirm`` consecutive checks will not grok within the theory's picture. :class:`StopPolicy`
says what to do with that knowledge; :func:`member_observables` computes every member's
observables (docs/theory.md §6) from the population's stacked tensors in a few batched ops,
reusing :mod:`li2_lightning.analysis` with its member dim; :class:`MemberTrack` advances the pure
rule for one member and keeps its history.

``PopulationModule(policy=..., source=..., sink=...)`` wires these in: a stopped member's slot
is frozen (its parameters and optimizer state stay as they were, see
:mod:`li2_lightning.functional.updates`'s ``active`` mask) or taken by the next pending member.
:func:`run_points` trains a list of compatible sweep points that way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch

from li2_lightning.analysis import features as ft
from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis.irreps import RealIrrepBasis
from li2_lightning.stages import Memory, Observation, Stage, Thresholds, next_stage

POLICY_MODES = ("off", "stop-done", "stop-done-and-stalled")
STOP_REASONS = ("done", "stalled", "budget", "truncated")


@dataclass(frozen=True)
class StopPolicy:
    """When a population checks its members' stages and which members it stops.

    Args:
        mode: ``"off"`` (stages recorded, every member trains its whole budget: full curves),
            ``"stop-done"`` (a member that reaches **done** stops) or ``"stop-done-and-stalled"``
            (also one called **stalled** at ``confirm`` consecutive checks).
        check_every: epochs of a member's own count between checks (epochs 0, n, 2n, ... and its
            last); each check costs one batched computation of the observables of the members due.
        confirm: consecutive stalled checks before a member stops as stalled (default 5: on the
            recorded trajectories of results/issue13_policy.md, 5 with the flat-test-accuracy stall
            made no wrong stop, 3 made one).
        thresholds: the stage rule's settings (:class:`~li2_lightning.stages.Thresholds`).
        purity_threshold: purity from which a node counts as pure (coverage).
        independence_nodes: nodes in the independence estimate (0: all), as ``StageMonitor``'s.
        record_observations: put every observation the rule saw in the member's row
            (``stage_observations``), e.g. to replay another rule on the same trajectories.

    Raises:
        ValueError: on an unknown mode or a count that is not a positive integer.
    """

    mode: str = "off"
    check_every: int = 10
    confirm: int = 5
    thresholds: Thresholds = field(default_factory=Thresholds)
    purity_threshold: float = 0.9
    independence_nodes: int = 128
    record_observations: bool = False

    def __post_init__(self) -> None:
        if self.mode not in POLICY_MODES:
            raise ValueError(f"policy mode={self.mode!r} is not accepted; accepted: {list(POLICY_MODES)}")
        for name in ("check_every", "confirm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"policy {name}={v!r} is not accepted; accepted: an integer >= 1")
        v = self.independence_nodes
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"policy independence_nodes={v!r} is not accepted; accepted: an integer >= 0")
        if not 0 < self.purity_threshold <= 1:
            raise ValueError(f"policy purity_threshold={self.purity_threshold!r} is not accepted; accepted: (0, 1]")
        if isinstance(self.thresholds, dict):
            object.__setattr__(self, "thresholds", Thresholds(**self.thresholds))

    @classmethod
    def from_dict(cls, d: Union["StopPolicy", dict, str, None]) -> "StopPolicy":
        """A policy from a sweep file's ``policy:`` mapping (or a mode string); the rule's
        thresholds may be given flat beside ``mode`` (``{mode: stop-done, stall_align: 0.2}``).

        Raises:
            ValueError: naming an unknown key.
        """
        if isinstance(d, StopPolicy):
            return d
        if d is None:
            return cls()
        if isinstance(d, str):
            return cls(mode=d)
        own = {f.name for f in dataclasses.fields(cls)}
        rule = {f.name for f in dataclasses.fields(Thresholds)}
        unknown = set(d) - own - rule
        if unknown:
            raise ValueError(f"policy keys {sorted(unknown)} are not known; accepted: {sorted(own | rule)}")
        th = dict(d.get("thresholds") or {}, **{k: v for k, v in d.items() if k in rule})
        return cls(**{k: v for k, v in d.items() if k in own and k != "thresholds"}, thresholds=Thresholds(**th))

    @property
    def stops(self) -> bool:
        return self.mode != "off"


@torch.no_grad()
def member_observables(W: torch.Tensor, V: torch.Tensor, F: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                       M: int, basis: RealIrrepBasis, loss: str = "mse", output_scale: float = 1.0,
                       purity_threshold: float = 0.9, independence_nodes: int = 128) -> dict[str, torch.Tensor]:
    """The stage observables of S members at once (docs/theory.md §6), each an (S,) tensor.

    Args:
        W: (S, 2M, K) first layers (purity and coverage of their irrep power, float32 as
            ``StageMonitor``'s snapshot).
        V: (S, K, M) top layers.
        F: (S, n, K) top hidden activations on each member's training rows (padded).
        y: (S, n) targets, any value on padded rows.
        mask: (S, n) 0/1, each member's real rows.
        M: group order. basis: the group's real irrep blocks.
        loss, output_scale: the training loss and β (G_F = −∂L/∂F in closed form).
        purity_threshold: purity of a pure node. independence_nodes: the first k nodes (0: all).

    Returns:
        ``a_G`` (alignment of G_F with ỸỸᵀF̃), ``independence``, ``purity`` (mean), ``coverage``.
    """
    yp = torch.where(mask > 0, y, M)  # label M: a padded row, left out of the class sums
    G = gr.G_F_closed_form(F, V.to(F.dtype), y, loss, output_scale, mask=mask)  # (S, n, K), 0 on padding
    a_G = gr.alignment(G, F, yp, M)
    K = F.shape[-1]
    nodes = None if independence_nodes <= 0 or independence_nodes >= K else torch.arange(
        independence_nodes, device=F.device)
    indep = gr.independence_ratio(F, nodes, mask=mask)
    power = ft.irrep_power(W, basis, dtype=torch.float32)  # (S, K, 2, B)
    return {"a_G": a_G, "independence": indep, "purity": ft.purity(power).mean(-1),
            "coverage": ft.coverage(power, purity_threshold)}


@dataclass
class MemberTrack:
    """One member's stage, the rule's memory, its transitions and its count of stalled checks."""

    stage: Stage = Stage.LAZY
    memory: Memory = field(default_factory=Memory)
    first_epoch: dict[str, int] = field(default_factory=dict)
    transitions: list[tuple[int, str]] = field(default_factory=list)
    stalled_checks: int = 0
    observations: Optional[list[dict]] = None

    def observe(self, obs: Observation, policy: StopPolicy) -> Optional[str]:
        """Advance the rule by one observation; the stop reason the policy gives, or None."""
        if not self.first_epoch:
            self.first_epoch[self.stage.label] = obs.epoch
        if policy.record_observations:
            self.observations = [] if self.observations is None else self.observations
            self.observations.append(dataclasses.asdict(obs))
        before = self.stage
        self.stage, self.memory = next_stage(before, obs, self.memory, policy.thresholds)
        if self.stage != before:
            self.transitions.append((obs.epoch, self.stage.label))
            self.first_epoch.setdefault(self.stage.label, obs.epoch)
        self.stalled_checks = self.stalled_checks + 1 if self.stage is Stage.STALLED else 0
        if policy.mode == "off":
            return None
        if self.stage is Stage.DONE:
            return "done"
        if policy.mode == "stop-done-and-stalled" and self.stalled_checks >= policy.confirm:
            return "stalled"
        return None

    def fields(self) -> dict[str, Any]:
        """``stage_<name>_epoch`` (first epoch of each stage, None if never) and ``stage_final``."""
        out: dict[str, Any] = {f"stage_{s.label}_epoch": self.first_epoch.get(s.label) for s in Stage}
        out["stage_final"] = self.stage.label
        if self.observations is not None:
            out["stage_observations"] = self.observations
        return out


def _member_settings(point: dict):
    from li2_lightning import sweep
    from li2_lightning.population import MemberSettings

    return MemberSettings(**{k: point[k] for k in sweep.MEMBER_KEYS if k in point})


def train_refilling(points: Sequence[dict], tokens: Sequence[Any], policy: Union[StopPolicy, dict, str, None],
                    ask: Callable[[], Optional[tuple[dict, Any]]], tell: Callable[[dict, dict, Any], None],
                    accelerator: str = "auto", devices: Union[int, str] = 1, precision: Optional[str] = None) -> None:
    """Train sweep points (one :func:`~li2_lightning.sweep.group_key`) as a population whose freed
    slots take the next points.

    Args:
        points, tokens: the first members (one token each, handed back in ``tell``).
        policy: the :class:`StopPolicy` (or its dict or mode); None: members stop at their budget.
        ask: returns the next ``(point, token)``, or None when nothing is pending.
        tell: called as ``tell(row, point, token)`` as soon as a point finishes; ``row`` is the
            population's results row (with ``curves`` and ``params_finite``).

    Raises:
        ValueError: if a pending point does not share the population's settings.
    """
    from li2_lightning import sweep
    from li2_lightning.population import train_population

    key = sweep.group_key(points[0])
    budget = int(points[0].get("max_epochs", sweep.DEFAULT_MAX_EPOCHS))  # shared: part of group_key

    def source():
        nxt = ask()
        if nxt is None:
            return None
        point, token = nxt
        if sweep.group_key(point) != key:
            raise ValueError(f"point {point} does not share the population's settings; ask must return points "
                             "of one sweep.group_key")
        return _member_settings(point), (point, token)

    module = sweep.build_population(list(points))
    module.configure_members(None if policy is None else StopPolicy.from_dict(policy), source=source,
                             sink=lambda row, pt: tell(row, *pt), tokens=list(zip(points, tokens)), max_epochs=budget)
    train_population(module, -1, accelerator=accelerator, devices=devices, precision=precision)  # ends when all stop


def run_points(points: Sequence[dict], policy: Union[StopPolicy, dict, str, None], population_size: int,
               sink: Optional[Callable[[dict, dict], None]] = None, accelerator: str = "cpu",
               spec: Optional[dict] = None) -> list[dict]:
    """Train compatible sweep points (one group_key) as one population with refill, in memory.

    The first ``population_size`` points take the slots; each point that stops (done, stalled or
    its ``max_epochs``) hands its slot to the next. ``sink(row, point)`` is called as soon as a
    point finishes. Rows are as ``li2 sweep`` stores them (:func:`~li2_lightning.sweep.point_row`).

    Returns:
        the result rows, in the order the points were given.
    """
    from li2_lightning import sweep

    points = list(points)
    if not points:
        return []
    spec = {"name": "run_points", **(spec or {})}
    S = max(1, min(population_size, len(points)))
    queue = iter(range(S, len(points)))
    rows: dict[int, dict] = {}
    t0 = time.perf_counter()

    def tell(row: dict, point: dict, i: int) -> None:
        finite = row.pop("params_finite", True)
        rows[i] = sweep.point_row(point, row, spec, finite, S, time.perf_counter() - t0)
        if sink is not None:
            sink(rows[i], point)

    def ask():
        i = next(queue, None)
        return None if i is None else (points[i], i)

    train_refilling(points[:S], list(range(S)), policy, ask, tell, accelerator=accelerator)
    return [rows[i] for i in range(len(points))]


def run_trials(study, store, trials: list, heartbeat, spec: dict) -> list[dict]:
    """``li2 sweep``'s worker under a ``policy:``: train ``trials`` (Optuna trials of one study)
    with refill; each finished point is told to the store at once (:func:`li2_lightning.study.tell_rows`)
    and its slot asks the study for the next waiting point, which joins the heartbeat.

    Returns:
        the rows told, in the order the points finished.
    """
    from li2_lightning import study as st
    from li2_lightning import sweep

    t0 = time.perf_counter()
    told: list[dict] = []
    S = len(trials)

    def ask():
        more = st.ask_batch(study, store, 1)
        if not more:
            return None
        heartbeat.trial_ids.append(more[0]._trial_id)
        return more[0].user_attrs["point"], more[0]

    def tell(row: dict, point: dict, trial) -> None:
        finite = row.pop("params_finite", True)
        row = sweep.point_row(point, row, spec, finite, S, time.perf_counter() - t0)
        st.tell_rows(study, store, [trial], [row], spec["name"])  # raises UnrecordedResults
        heartbeat.trial_ids.remove(trial._trial_id)
        told.append(row)

    train_refilling([t.user_attrs["point"] for t in trials], trials, spec.get("policy"), ask, tell,
                    accelerator=spec.get("accelerator", "auto"), devices=spec.get("devices", 1),
                    precision=spec.get("precision"))
    return told
