"""``li2 sweep FILE``: expand a YAML sweep and train it as populations, bookkept by Optuna.

A sweep file::

    name: fig5_cpu
    results: ../results/fig5_cpu.jsonl  # relative to THIS file's folder; default: FILE with suffix .jsonl
    population_size: 25               # most members trained together (default: from free memory)
    accelerator: auto                 # any Lightning accelerator
    policy: {mode: stop-done-and-stalled, check_every: 10, confirm: 3}  # optional, see below
    fixed: {K: 256, lr: 1.0e-3, weight_decay: 2.0e-4, max_epochs: 1500}
    grid:                             # cartesian product, merged over `fixed`
      group: [Z23, Z41]
      p_star_multiplier: [0.5, 1.0, 2.0]
      seed: [0, 1, 2]
    # or `grids:` a list of such grids (their union), e.g. one per group family;
    # `points:` a list of explicit settings, each crossed with the grid(s)

Point settings are named as in the training config (:data:`CONFIG_KEYS`: ``seed_everything``,
``trainer.max_epochs``, ``data.group``, ``data.train_fraction``, ``model.K``, ``model.activation``,
``model.optimizer.class_path``, ``model.optimizer.init_args.lr`` ...), so a point reads like the
``li2 fit`` run that reproduces it (``li2 sweep FILE --fit-command I`` prints that command). The short
keys below are accepted as aliases, and points are stored with them (their ids do not change).
Short point settings (:data:`POINT_KEYS`) are the fields of ``MemberSettings`` (:data:`MEMBER_KEYS`),
``PopulationModule``'s shared arguments, the optimizer (:data:`OPTIMIZER_KEYS`: ``optimizer`` is
adam, adamw, sgd or muon, ``preset`` Muon's li2, keller or torch, and the other fields of
``OptimizerSpec``) and ``max_epochs``; ``seed`` is the init seed and ``split_seed`` defaults to it.
Every value is checked when the file is read; a wrong one is reported with the file, the key and
what is accepted.

Bookkeeping (:mod:`li2_lightning.study`): points that share every setting except the per-member ones
form one Optuna study; workers ask up to ``population_size`` waiting trials of a study, train them
as one population and tell each its result row and per-epoch curves. The store is an SQLite file
beside ``results`` (``x.jsonl`` -> ``x.db``), resolved from the sweep file's folder, so a sweep run
from any folder finds its finished points; ``--storage journal:PATH`` or ``--storage URL``
(PostgreSQL, MySQL) for workers on several machines. ``--workers N`` starts N local workers. Any
number of ``li2 sweep`` processes may run one sweep: each point is trained once; a killed worker's
points are enqueued again once its heartbeats stop (``--grace-period``), and finished by the others
or a rerun. The store is checked for writes before anything trains; a result the store refuses
(disk full) is saved to a JSONL file whose path is printed, and the exit status is 3.

``policy:`` (a :class:`~li2_lightning.population_policy.StopPolicy`; default none, full curves)
tracks each member's stage (docs/theory.md §7) every ``check_every`` of its epochs and, with
``stop-done`` or ``stop-done-and-stalled``, stops a member that is done (or stalled at ``confirm``
consecutive checks); its result is told to the store at once (``stop_reason``, ``stop_epoch``,
metrics at the stop) and the next waiting point of the study takes its slot.

When the sweep is done, every finished point is exported to ``results`` as one JSON line (also
``--export OUT.jsonl``), the file ``li2 report`` reads; rows already in ``results`` when the store is
created are taken over as finished. ``li2 sweep FILE --dry-run`` shows the plan.

W&B: with ``--wandb [PROJECT]`` or ``wandb: {project: ...}`` in the file, each finished point becomes its
own W&B run (config in the training config's keys, history its per-epoch curves by ``epoch``, group
the sweep's name, job type ``sweep-point``), so W&B's tables, parallel coordinates and grouping work
on a sweep; the store stays the record. Agents instead: ``li2 sweep FILE --export-wandb OUT.yaml`` writes a W&B grid sweep over ``point_index``;
``wandb sweep OUT.yaml`` then ``wandb agent ID`` on each machine runs
``li2 sweep FILE --point_index=I`` per point (one member; its row appended to ``results`` and logged
to the W&B run). The agents need network access to W&B; offline they cannot start.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

MEMBER_KEYS = ("seed", "split_seed", "train_fraction", "n_train", "p_star_multiplier", "lr",
               "weight_decay", "muon_lr", "V_init_scale")
#: settings of the population's OptimizerSpec (``optimizer`` is its name)
OPTIMIZER_KEYS = ("optimizer", "preset", "betas", "eps", "momentum", "nesterov", "ns_steps", "ns_dtype",
                  "adam_decoupled")
SHARED_KEYS = ("group", "K", "activation", "loss", "output_scale", "p_star_c", "max_epochs",
               "stop_at_test_acc", "check_every", "eval_every") + OPTIMIZER_KEYS
#: the model variants of docs/theory.md §10, shared by a population
SHARED_KEYS += ("hidden_layers", "residual", "complex_weights", "top_layer", "ridge_lambda")
POINT_KEYS = MEMBER_KEYS + SHARED_KEYS
FILE_KEYS = ("name", "results", "population_size", "accelerator", "devices", "precision", "policy", "wandb", "fixed",
             "grid", "grids", "points", "description")
DEFAULT_MAX_EPOCHS = 1000
DEFAULT_POPULATION_CAP = 32  # the most members picked from free memory when the file sets none
_SIZE_KEYS = ("train_fraction", "n_train", "p_star_multiplier")

_INT, _NUM, _STR, _BOOL = "an integer", "a number", "a string", "true or false"
#: per point setting: (kind, lower bound or None, lower bound inclusive, upper bound or None, None allowed)
_TYPES: dict[str, tuple] = {
    "seed": (_INT, 0, True, None, False), "split_seed": (_INT, 0, True, None, True),
    "n_train": (_INT, 1, True, None, False), "K": (_INT, 1, True, None, False),
    "max_epochs": (_INT, 1, True, None, False), "check_every": (_INT, 1, True, None, False),
    "eval_every": (_INT, 1, True, None, False), "ns_steps": (_INT, 1, True, None, False),
    "train_fraction": (_NUM, 0, False, 1, False), "p_star_multiplier": (_NUM, 0, False, None, False),
    "lr": (_NUM, 0, True, None, False), "weight_decay": (_NUM, 0, True, None, False),
    "muon_lr": (_NUM, 0, True, None, True), "V_init_scale": (_NUM, None, True, None, False),
    "output_scale": (_NUM, 0, False, None, False), "p_star_c": (_NUM, 0, False, None, False),
    "stop_at_test_acc": (_NUM, 0, True, 1, True), "eps": (_NUM, 0, False, None, False),
    "momentum": (_NUM, 0, True, 1, True), "group": (_STR,) + (None,) * 3 + (False,),
    "activation": (_STR,) + (None,) * 3 + (False,), "loss": (_STR,) + (None,) * 3 + (False,),
    "optimizer": (_STR,) + (None,) * 3 + (False,), "preset": (_STR,) + (None,) * 3 + (False,),
    "ns_dtype": (_STR,) + (None,) * 3 + (True,), "nesterov": (_BOOL,) + (None,) * 3 + (True,),
    "adam_decoupled": (_BOOL,) + (None,) * 3 + (True,),
    "hidden_layers": (_INT, 1, True, None, False), "residual": (_BOOL,) + (None,) * 3 + (False,),
    "complex_weights": (_BOOL,) + (None,) * 3 + (False,), "top_layer": (_STR,) + (None,) * 3 + (False,),
    "ridge_lambda": (_NUM, 0, True, None, False),
}
_CHOICES = {"optimizer": ("adam", "adamw", "sgd", "muon"), "preset": ("li2", "keller", "torch")}


#: a point setting in the training config's vocabulary (``li2 fit``'s flags) -> the sweep's short key;
#: both are accepted in sweep files, points are stored with the short keys (so their ids do not change)
CONFIG_KEYS = {"seed_everything": "seed", "trainer.max_epochs": "max_epochs", "data.group": "group",
               **{f"data.{k}": k for k in ("split_seed", "train_fraction", "n_train", "p_star_multiplier",
                                            "p_star_c")},
               **{f"model.{k}": k for k in ("K", "activation", "loss", "output_scale", "V_init_scale",
                                             "hidden_layers", "residual", "complex_weights", "top_layer",
                                             "ridge_lambda")},
               "model.optimizer": "optimizer", "model.optimizer.class_path": "optimizer",
               **{f"model.optimizer.init_args.{k}": k for k in ("weight_decay", "betas", "eps", "momentum",
                                                                "nesterov", "preset", "ns_steps", "ns_dtype",
                                                                "adam_decoupled")},
               "model.optimizer.init_args.adam_betas": "betas", "model.optimizer.init_args.adam_eps": "eps",
               # Muon's lr is its step on W (short: muon_lr), adam_lr the step on V (short: lr)
               "model.optimizer.init_args.lr": "_opt_lr", "model.optimizer.init_args.adam_lr": "_adam_lr"}
#: the optimizer classes ``li2 fit`` gets for the sweep's optimizer names
OPTIMIZER_CLASSES = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD",
                     "muon": "li2_lightning.optim.Muon"}
#: settings of a population only (no ``li2 fit`` flag): when to stop and how often test metrics are taken
POPULATION_ONLY_KEYS = ("stop_at_test_acc", "check_every", "eval_every")


def short_setting(key: str, value: Any) -> tuple[str, Any]:
    """A sweep-file setting in either vocabulary -> (short key, value); unknown keys pass through."""
    short = CONFIG_KEYS.get(key, key)
    if short == "optimizer" and isinstance(value, str):
        value = {c: n for n, c in OPTIMIZER_CLASSES.items()}.get(value, value)
    return short, value


def _resolve_lr(fname: str, point: dict) -> dict:
    """Give ``model.optimizer.init_args.lr`` / ``adam_lr`` their short keys, which depend on the optimizer."""
    if "_opt_lr" not in point and "_adam_lr" not in point:
        return point
    point = dict(point)
    opt_lr, adam_lr = point.pop("_opt_lr", None), point.pop("_adam_lr", None)
    muon = point.get("optimizer") == "muon"
    if adam_lr is not None and not muon:
        raise ValueError(f"sweep file '{fname}': model.optimizer.init_args.adam_lr is set but the optimizer is "
                         f"{point.get('optimizer', 'adam')!r}; it applies to li2_lightning.optim.Muon only")
    for short, value in (("muon_lr", opt_lr), ("lr", adam_lr)) if muon else (("lr", opt_lr),):
        if value is not None:
            if short in point and point[short] != value:
                raise ValueError(f"sweep file '{fname}': point {point} sets {short} twice (short key and "
                                 "model.optimizer.init_args.*) with different values")
            point[short] = value
    return point


def config_of(point: dict) -> dict:
    """A point's hyperparameters in the training config's vocabulary, defaults resolved as the
    population uses them (seed, split seed, train size, optimizer, lr, weight decay, epochs).

    Population-only settings (:data:`POPULATION_ONLY_KEYS`) keep their short keys.
    """
    from li2_lightning.population import MemberSettings

    d = MemberSettings()
    p = {"optimizer": "adam", "K": 512, "max_epochs": DEFAULT_MAX_EPOCHS, "lr": d.lr,
         "weight_decay": d.weight_decay, **point}
    p.setdefault("split_seed", p.get("seed", d.seed))
    p.setdefault("seed", d.seed)
    if not any(k in p for k in _SIZE_KEYS):
        p["train_fraction"] = 0.4  # resolve_n_train's default
    muon = p["optimizer"] == "muon"
    if muon:
        p["_adam_lr"] = p.pop("lr")
        p["_opt_lr"] = p.pop("muon_lr", p["_adam_lr"])
    else:
        p["_opt_lr"] = p.pop("lr")
    back = {short: key for key, short in CONFIG_KEYS.items()
            if key not in ("model.optimizer", "model.optimizer.init_args.adam_betas",
                           "model.optimizer.init_args.adam_eps")}
    if muon:
        back.update(betas="model.optimizer.init_args.adam_betas", eps="model.optimizer.init_args.adam_eps")
    out = {}
    for key, value in p.items():
        if key == "optimizer":
            value = OPTIMIZER_CLASSES[value]
        out[back.get(key, key)] = list(value) if isinstance(value, tuple) else value
    return dict(sorted(out.items()))


def fit_args(point: dict) -> list[str]:
    """``li2 fit`` arguments that train this point alone through the Lightning CLI (configs/base.yaml's
    defaults for the rest); population-only settings are left out."""
    args = ["fit"]
    for key, value in config_of(point).items():
        if key in POPULATION_ONLY_KEYS:
            continue
        text = json.dumps(value) if isinstance(value, (bool, list)) else str(value)
        args += [f"--{key}", text]
    return args


def point_id(point: dict) -> str:
    """A stable id of a point's settings (12 hex digits of a SHA-1 of its sorted JSON)."""
    return hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


def load_sweep(path: str | os.PathLike) -> dict:
    """Read and validate a sweep file; returns the parsed dict with defaults filled in.

    ``results`` is resolved from the sweep file's folder (not the current folder). The points are
    checked too (:func:`expand`), so a wrong value is reported before anything trains.

    Raises:
        ValueError: one line naming the file, the key and what is accepted, for a missing, binary or
            malformed file, unknown keys, a wrong structure or a value of the wrong type or range.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file '{path}' does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"sweep file '{path}' is not a text file; accepted: a YAML mapping") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"sweep file '{path}' is not valid YAML{where}: {what}") from None
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file '{path}' holds a {type(spec).__name__}; accepted: a mapping with keys "
                         f"{list(FILE_KEYS)}")
    unknown = set(spec) - set(FILE_KEYS)
    if unknown:
        raise ValueError(f"sweep file '{path}': unknown keys {sorted(map(str, unknown))}; accepted: {list(FILE_KEYS)}")
    if "grid" in spec and "grids" in spec:
        raise ValueError(f"sweep file '{path}': give `grid` or `grids`, not both")
    _check_structure(path, spec)
    if spec.get("policy") is not None:  # stop members that are done or stalled, refill their slots (issue 13)
        from li2_lightning.population_policy import StopPolicy

        try:
            StopPolicy.from_dict(spec["policy"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"sweep file '{path}': policy: {err}") from None
    spec.setdefault("name", path.stem)
    results = Path(spec.get("results") or path.with_suffix(".jsonl").name)
    spec["results"] = str(results if results.is_absolute() else (path.parent / results).resolve())
    spec.setdefault("population_size", None)
    spec.setdefault("accelerator", "auto")
    spec["_file"] = str(path.resolve())
    expand(spec)  # every point checked now
    return spec


def _check_structure(path: Path, spec: dict) -> None:
    def bad(key: str, value: Any, accepted: str) -> ValueError:
        return ValueError(f"sweep file '{path}': {key}={value!r} is not accepted; accepted: {accepted}")

    for key in ("name", "results", "accelerator", "description"):
        if key in spec and not isinstance(spec[key], str):
            raise bad(key, spec[key], "a string")
    wb = spec.get("wandb")
    if wb is not None and (not isinstance(wb, dict) or set(wb) - {"project", "entity"}
                           or not all(isinstance(v, str) for v in wb.values())):
        raise bad("wandb", wb, "a mapping with `project` (and `entity`), e.g. {project: li2-sweeps}")
    ps = spec.get("population_size")
    if ps is not None and (isinstance(ps, bool) or not isinstance(ps, int) or ps < 1):
        raise bad("population_size", ps, "an integer >= 1 (or leave it out: picked from free memory)")
    if "fixed" in spec and spec["fixed"] is not None and not isinstance(spec["fixed"], dict):
        raise bad("fixed", spec["fixed"], "a mapping of point settings, e.g. {K: 64, lr: 0.001}")
    grids = spec["grids"] if "grids" in spec else [spec.get("grid") or {}]
    if not isinstance(grids, list) or not grids:
        raise bad("grids", spec.get("grids"), "a non-empty list of grids (mappings of setting: list of values)")
    for i, grid in enumerate(grids):
        where = "grid" if "grid" in spec else f"grids[{i}]"
        if not isinstance(grid, dict):
            raise bad(where, grid, "a mapping of setting: list of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise bad(f"{where}.{key}", values, "a non-empty list")
    points = spec.get("points")
    if points is not None and (not isinstance(points, list) or not all(isinstance(p, dict) for p in points)):
        raise bad("points", points, "a list of mappings of point settings")


def check_value(key: str, value: Any) -> Optional[str]:
    """None if ``value`` is accepted for point setting ``key``, else what is accepted."""
    kind, lo, lo_inclusive, hi, nullable = _TYPES.get(key, (None,) * 5)
    if key == "betas":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
        return None if ok else "a list of two numbers in [0, 1)"
    if value is None:
        return None if nullable else f"{kind}" + _range(lo, lo_inclusive, hi)
    if kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == _NUM:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind == _STR:
        ok = isinstance(value, str) and (key not in _CHOICES or value in _CHOICES[key])
        if key in _CHOICES:
            return None if ok else f"one of {list(_CHOICES[key])}"
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    else:
        return None
    if ok and kind in (_INT, _NUM):
        ok = (lo is None or (value >= lo if lo_inclusive else value > lo)) and (hi is None or value <= hi)
    return None if ok else f"{kind}" + _range(lo, lo_inclusive, hi)


def _range(lo, lo_inclusive, hi) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_inclusive else '>'} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def expand(spec: dict) -> list[dict]:
    """All points of a sweep, in file order: (points × grid) merged over ``fixed``, duplicates dropped.

    Raises:
        ValueError: on an unknown point setting, a value of the wrong type or range, or a grid
            entry that is not a non-empty list.
    """
    fname = spec.get("_file", "<sweep>")
    fixed = dict(spec.get("fixed") or {})
    grids = spec.get("grids") or [spec.get("grid") or {}]
    explicit = spec.get("points") or [{}]
    for key, value in fixed.items():
        _check_setting(fname, f"fixed.{key}", key, value)
    for i, extra in enumerate(explicit):
        for key, value in extra.items():
            _check_setting(fname, f"points[{i}].{key}", key, value)
    fixed = dict(short_setting(k, v) for k, v in fixed.items())
    explicit = [dict(short_setting(k, v) for k, v in extra.items()) for extra in explicit]
    points, seen = [], set()
    for gi, grid in enumerate(grids):
        where = "grid" if "grids" not in spec else f"grids[{gi}]"
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"sweep file '{fname}': {where}.{key}={values!r} is not accepted; "
                                 "accepted: a non-empty list")
            for j, value in enumerate(values):
                _check_setting(fname, f"{where}.{key}[{j}]", key, value)
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            for extra in explicit:
                point = {**fixed, **extra, **dict(short_setting(k, v) for k, v in zip(keys, combo))}
                point = _resolve_lr(fname, point)
                _check_point(fname, point)
                pid = point_id(point)
                if pid not in seen:
                    seen.add(pid)
                    points.append(point)
    return points


def _check_setting(fname: str, where: str, key: Any, value: Any) -> None:
    short, value = short_setting(key, value) if isinstance(key, str) else (key, value)
    short = {"_opt_lr": "lr", "_adam_lr": "lr"}.get(short, short)
    if short not in POINT_KEYS:
        raise ValueError(f"sweep file '{fname}': {where}: setting {key!r} is not known; accepted: {list(POINT_KEYS)} "
                         f"or their training-config names {list(CONFIG_KEYS)}")
    accepted = check_value(short, value)
    if short == "optimizer" and accepted is not None:
        accepted += f" or one of {list(OPTIMIZER_CLASSES.values())}"
    if accepted is not None:
        raise ValueError(f"sweep file '{fname}': {where}={value!r} is not accepted; accepted: {accepted}")


def _check_point(fname: str, point: dict) -> None:
    if "group" not in point:
        raise ValueError(f"sweep file '{fname}': point {point} has no `group`; set it in `fixed`, the grid or `points`")
    if sum(k in point for k in _SIZE_KEYS) > 1:
        raise ValueError(f"sweep file '{fname}': point {point} sets more than one of {list(_SIZE_KEYS)}")


def group_key(point: dict) -> str:
    """What points must share to be trained in one population (one Optuna study per key)."""
    shared = {k: point.get(k) for k in SHARED_KEYS}
    shared["_size_key"] = next((k for k in _SIZE_KEYS if k in point), None)
    shared["_muon_lr"] = "muon_lr" in point
    return json.dumps(shared, sort_keys=True, default=str)


def pack(points: list[dict], population_size: int) -> list[list[dict]]:
    """Split points into populations: same :func:`group_key`, sorted by train size within a
    population (less padding), at most ``population_size`` each."""
    out = []
    for members in groups(points).values():
        out += [members[i : i + population_size] for i in range(0, len(members), population_size)]
    return out


def groups(points: list[dict]) -> dict[str, list[dict]]:
    """Points by :func:`group_key`, in first-appearance order, each sorted by train size."""
    buckets: dict[str, list[dict]] = {}
    for p in points:
        buckets.setdefault(group_key(p), []).append(p)
    for key, members in buckets.items():
        size_key = next((k for k in _SIZE_KEYS if k in members[0]), None)
        if size_key:
            buckets[key] = sorted(members, key=lambda p: p[size_key])
    return buckets


def population_size_for(members: list[dict], available: Optional[int] = None,
                        cap: int = DEFAULT_POPULATION_CAP, device: str = "cpu") -> int:
    """The most members of this group that fit in free memory together (at most ``cap``).

    The plan is ``memory.population_bytes``: a fixed part, the group's data once, and each member at
    ``memory.member_bytes`` of its largest train size.

    Raises:
        ValueError: if not even one member fits, before anything is allocated.
    """
    from li2_lightning import memory
    from li2_lightning.data import P_STAR_C, resolve_n_train
    from li2_lightning.groups import make_group

    first = members[0]
    M = make_group(first["group"]).order
    K = int(first.get("K", 512))
    n = max(resolve_n_train(M, m.get("train_fraction"), m.get("n_train"), m.get("p_star_multiplier"),
                            m.get("p_star_c", P_STAR_C)) for m in members)
    est = memory.estimate_bytes(M, K, n, M * M - n)
    per_member = memory.member_bytes(est)
    free = ((memory.available_bytes(device) if available is None else available)
            - memory.SAFETY * est.data - memory.POPULATION_FIXED)
    S = int(free // per_member)
    if S < 1:
        raise ValueError(f"one member of group {first['group']} (M={M}, K={K}, {n} train pairs) needs about "
                         f"{per_member / 1e9:.2f} GB but {max(free, 0) / 1e9:.2f} GB is free; lower K or the group order")
    return min(S, cap, len(members))


def build_population(members: list[dict]):
    """A ``PopulationModule`` for points that share their non-member settings."""
    from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule

    first = members[0]
    kwargs: dict[str, Any] = {k: first[k] for k in SHARED_KEYS if k in first and k not in
                              ("max_epochs",) + OPTIMIZER_KEYS}
    spec = {k: first[k] for k in OPTIMIZER_KEYS if k in first}
    if "optimizer" in spec:
        spec["name"] = spec.pop("optimizer")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    kwargs["optimizer"] = OptimizerSpec(**spec)
    kwargs["members"] = [MemberSettings(**{k: m[k] for k in MEMBER_KEYS if k in m}) for m in members]
    return PopulationModule(**kwargs)


def _epoch_progress(bar, label: str, max_epochs: int):
    """A callback that shows the running population's epoch in the sweep's progress bar."""
    import lightning.pytorch as pl

    class _Progress(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            e = trainer.current_epoch + 1
            if e % 10 == 0 or e == max_epochs:
                bar.set_postfix_str(f"{label}: epoch {e}/{max_epochs}", refresh=True)

    return _Progress()


def _finite(v: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def run_population(members: list[dict], spec: dict, bar=None) -> list[dict]:
    """Train one population; returns one result row per member.

    A row is ``PopulationModule.results()``'s with ``id``, ``point``, ``sweep``, the per-epoch
    ``curves`` (``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` as in
    ``lightning_metrics()``, float32 values, None where not measured), and ``diverged`` /
    ``outcome``: a member whose parameters or final train loss are not finite is ``diverged``
    (its accuracies mean nothing), the others ``finished``.
    """
    import torch

    from li2_lightning.population import train_population

    t0 = time.time()
    module = build_population(members)
    max_epochs = int(members[0].get("max_epochs", DEFAULT_MAX_EPOCHS))
    label = f"{members[0]['group']} ×{len(members)}"
    rows = train_population(module, max_epochs,
                            accelerator=spec.get("accelerator", "auto"), devices=spec.get("devices", 1),
                            precision=spec.get("precision"),
                            # across processes the Trainer is pickled: no progress bar callback then
                            callbacks=([_epoch_progress(bar, label, max_epochs)]
                                       if bar is not None and spec.get("devices", 1) in (1, None) else None))
    elapsed = time.time() - t0
    # (S, epochs) each; float32 values in their shortest decimal form (exact in float32, short JSON)
    curves = {k: [[float(str(x)) for x in member] for member in v.T.numpy()]
              for k, v in module.lightning_metrics().items()}
    for s, (point, row) in enumerate(zip(members, rows)):
        finite = bool(torch.isfinite(module.W[s]).all() and torch.isfinite(module.V[s]).all())
        row["curves"] = {k: [None if math.isnan(x) or math.isinf(x) else x for x in c[s]] for k, c in curves.items()}
        rows[s] = point_row(point, row, spec, finite, len(members), elapsed)
    return rows


def point_row(point: dict, row: dict, spec: dict, finite: bool, population_size: int, elapsed: float) -> dict:
    """A member's results row as the sweep stores it: with ``id``, ``point``, ``sweep``, the
    population's size and time, and ``diverged`` / ``outcome`` (parameters or final train loss not
    finite: ``diverged``)."""
    loss = row.get("final_train_loss")
    diverged = not finite or loss is None or not math.isfinite(loss)
    if "p_star_multiplier" in point:
        row["p_star_multiplier"] = point["p_star_multiplier"]
    row.update(id=point_id(point), point=point, sweep=spec["name"], population_size=population_size,
               population_time_s=round(elapsed, 3), diverged=diverged, outcome="diverged" if diverged else "finished")
    return _finite(row)


def read_rows(path: str | os.PathLike) -> dict[str, dict]:
    """Rows of a results JSONL by id (unparsable lines, e.g. a torn last line, are skipped)."""
    path = Path(path)
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return rows


def done_ids(results: str | os.PathLike) -> set[str]:
    """Ids of the points in a results JSONL."""
    return set(read_rows(results))


def append_results(results: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines with one write loop and an fsync; a short write raises OSError."""
    from li2_lightning.study import write_jsonl

    path = Path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
        with path.open("a") as f:  # a torn line from a killed writer stays on its own line
            f.write("\n")
    write_jsonl(path, rows, append=True)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class Sweep:
    """A sweep file opened on its store: the studies (one per group of compatible points)."""

    def __init__(self, path: str | os.PathLike, storage: Optional[str] = None, population_size: Optional[int] = None,
                 accelerator: Optional[str] = None, results: Optional[str] = None, heartbeat_interval: int = 20,
                 grace_period: int = 60, wandb_project: Optional[str] = None) -> None:
        from li2_lightning import study as st

        spec = load_sweep(path)
        if results:
            spec["results"] = str(Path(results).resolve())
        if population_size:
            spec["population_size"] = population_size
        if accelerator:
            spec["accelerator"] = accelerator
        if wandb_project is not None:  # "": the file's project (or li2)
            spec["wandb"] = {**(spec.get("wandb") or {}), **({"project": wandb_project} if wandb_project else {})}
        self.spec = spec
        self.points = expand(spec)
        self.index = {point_id(p): i for i, p in enumerate(self.points)}
        url = storage or st.default_store_url(Path(spec["results"]))
        self.store = st.open_store(url, heartbeat_interval, grace_period)  # StoreError before any training
        old = {k: v for k, v in read_rows(spec["results"]).items() if k in self.index}
        self.studies: list[tuple[Any, list[dict]]] = []
        for key, members in groups(self.points).items():
            entries = [(self.index[point_id(p)], point_id(p), p) for p in members]
            study = st.ensure_study(self.store, st.study_name(spec["name"], key), entries, old)
            self.studies.append((study, members))
        self._sizes: dict[int, int] = {}

    def size(self, i: int) -> int:
        """Population size of study i: the file's, or from free memory."""
        if i not in self._sizes:
            fixed = self.spec.get("population_size")
            members = self.studies[i][1]
            device = "cuda" if self.spec.get("accelerator") in ("gpu", "cuda") else "cpu"
            self._sizes[i] = fixed or population_size_for(members, device=device)
        return self._sizes[i]

    def rows(self) -> list[dict]:
        """One row per finished point (the first COMPLETE trial of each), in file order."""
        from li2_lightning.study import completed_rows

        out: dict[str, dict] = {}
        for study, _ in self.studies:
            for row in completed_rows(study):
                out.setdefault(row["id"], row)
        return sorted(out.values(), key=lambda r: self.index.get(r["id"], 0))

    def export(self, out: Optional[str | os.PathLike] = None) -> Path:
        """Write the finished rows as JSON lines to ``out`` (default ``results``), keeping the rows of
        other sweeps that share the file; written to a temporary file and renamed."""
        from li2_lightning.study import write_jsonl

        path = Path(out or self.spec["results"])
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = self.rows()
        others = [r for k, r in read_rows(path).items() if k not in self.index]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            write_jsonl(tmp, others + mine)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def pending(self) -> int:
        """Points not yet finished."""
        from optuna.trial import TrialState

        done = {t.user_attrs.get("point_id") for study, _ in self.studies
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        return sum(pid not in done for pid in self.index)

    def work(self, limit: Optional[int] = None, progress: bool = True, timings: Optional[dict] = None) -> int:
        """Train populations until no point is waiting or running; returns the points trained here.

        A worker with nothing to ask waits for the running trials of others, failing and re-enqueueing
        those whose heartbeats stopped, so a killed worker's points are finished here.

        Args:
            limit: stop after this many populations.
            timings: if given, gets ``{"store": s, "train": s}``: seconds in Optuna calls and in training.
        """
        from optuna.trial import TrialState

        from li2_lightning import study as st

        _quiet_lightning()
        from tqdm.auto import tqdm

        timings = {} if timings is None else timings
        timings.setdefault("store", 0.0)
        timings.setdefault("train", 0.0)
        bar = tqdm(total=len(self.points), initial=len(self.points) - self.pending(), unit="pt",
                   disable=not progress, file=sys.stderr)
        trained = populations = 0
        active = list(range(len(self.studies)))
        drained: set[int] = set()
        while active and (limit is None or populations < limit):
            t0 = time.perf_counter()
            active.sort(key=lambda i: i in drained)  # studies that just came up empty are asked last
            for i in active:
                study, _ = self.studies[i]
                try:
                    trials = st.ask_batch(study, self.store, self.size(i))
                except (ValueError, st.StoreError):
                    raise
                except Exception as err:  # nothing trained yet, nothing lost: say which store failed
                    raise st.StoreError(f"results store '{self.store.path or self.store.url}' failed while "
                                        f"asking for points: {st._why(err)}") from err
                if trials:
                    break
                drained.add(i)
            timings["store"] += time.perf_counter() - t0
            if not trials:  # nothing waiting: reclaim dead workers' points or wait for the live ones
                t0 = time.perf_counter()
                for i in active:
                    st.reclaim_stale(self.store, self.studies[i][0])
                live = []
                for i in active:
                    c = st.counts(self.studies[i][0])
                    if c.get("WAITING") or c.get("RUNNING"):
                        live.append(i)
                waiting = any(st.counts(self.studies[i][0]).get("WAITING") for i in live)
                active = live
                drained.clear()  # reclaimed points may be waiting again anywhere
                timings["store"] += time.perf_counter() - t0
                if active and not waiting:
                    time.sleep(min(self.store.heartbeat_interval, 2))
                continue
            members = [t.user_attrs["point"] for t in trials]
            with st.Heartbeat(self.store, study) as hb:
                hb.trial_ids = [t._trial_id for t in trials]
                t0 = time.perf_counter()
                if self.spec.get("policy") is not None:  # each point told as it stops; its slot asks the next
                    from li2_lightning.population_policy import run_trials

                    rows = run_trials(study, self.store, trials, hb, self.spec)
                    timings["train"] += time.perf_counter() - t0
                else:
                    rows = run_population(members, self.spec, bar if progress else None)
                    timings["train"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    st.tell_rows(study, self.store, trials, rows, self.spec["name"])  # raises UnrecordedResults
                    timings["store"] += time.perf_counter() - t0
            if self.spec.get("wandb") is not None:  # after the store has the rows: W&B is a view, not the record
                try:
                    log_to_wandb(rows, self.spec)
                except ValueError:
                    raise
                except Exception as err:
                    print(f"li2 sweep: W&B runs not written ({type(err).__name__}: {err}); the results are in "
                          "the store", file=sys.stderr)
            trained += len(rows)
            populations += 1
            grokked = sum(r.get("epochs_to_test_acc_0.99") is not None for r in rows)
            bar.set_postfix_str(f"{members[0]['group']}: {grokked}/{len(rows)} to test acc 0.99")
            bar.update(len(rows))
        bar.close()
        return trained


def run_sweep(path: str | os.PathLike, results: Optional[str] = None, population_size: Optional[int] = None,
              accelerator: Optional[str] = None, limit: Optional[int] = None, progress: bool = True,
              storage: Optional[str] = None, workers: int = 1, heartbeat_interval: int = 20,
              grace_period: int = 60, export: bool = True, threads: Optional[int] = None,
              wandb_project: Optional[str] = None, devices: Optional[int] = None) -> int:
    """Run every pending point of a sweep file; returns the number of points trained by this process.

    ``devices`` > 1 (or the file's ``devices``) spreads each population's members over that many
    devices or processes (``population_ddp``; populations without a ``policy``).

    With ``workers`` > 1, starts that many worker processes (this process trains nothing) and
    returns 0; their exit status is checked.

    Raises:
        ValueError: on a wrong sweep file. StoreError: the store cannot be opened or written.
        UnrecordedResults: a result could not be told (saved to the file it names).
        RuntimeError: a worker process failed.
    """
    sweep = Sweep(path, storage, population_size, accelerator, results, heartbeat_interval, grace_period,
                  wandb_project)
    spec = sweep.spec
    if devices:
        spec["devices"] = devices
    print(f"li2 sweep {spec['name']}: {len(sweep.points)} points in {len(sweep.studies)} group(s), "
          f"{sweep.pending()} to run; store {sweep.store.path or sweep.store.url}", file=sys.stderr)
    trained = 0
    if workers > 1:
        cmd = [sys.executable, "-m", "li2_lightning.sweep", spec["_file"], "--storage", sweep.store.url,
               "--results", spec["results"], "--no-export", "--heartbeat-interval", str(heartbeat_interval),
               "--grace-period", str(grace_period)] + (["--no-progress"] if not progress else [])
        for flag, value in (("--population-size", population_size), ("--accelerator", accelerator),
                            ("--limit", limit), ("--threads", threads), ("--wandb", wandb_project),
                            ("--devices", devices)):
            if value is not None:
                cmd += [flag, str(value)]
        procs = [subprocess.Popen(cmd) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"worker exit statuses {codes}; rerun `li2 sweep {path}` to finish the sweep")
    else:
        trained = sweep.work(limit, progress)
    if export:
        out = sweep.export()
        left = sweep.pending()
        print(f"li2 sweep {spec['name']}: {len(sweep.points) - left} of {len(sweep.points)} points finished, "
              f"exported to {out}", file=sys.stderr)
    return trained


def _quiet_lightning() -> None:
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")


def export_wandb(path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write a W&B sweep config that runs each point of ``path`` as one agent run."""
    spec = load_sweep(path)
    n = len(expand(spec))
    config = {"name": spec["name"], "program": "li2", "method": "grid",
              "parameters": {"point_index": {"values": list(range(n))}},
              "command": ["li2", "sweep", str(path), "${args}"]}
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def run_point(path: str | os.PathLike, index: int, results: Optional[str] = None) -> dict:
    """Run point ``index`` of a sweep alone (a W&B agent's unit of work); log it to W&B if available."""
    spec = load_sweep(path)
    if results:
        spec["results"] = results
    points = expand(spec)
    if not 0 <= index < len(points):
        raise ValueError(f"point_index={index} is out of range; the sweep has points 0..{len(points) - 1}")
    point = points[index]
    if point_id(point) in done_ids(spec["results"]):
        print(f"point {index} ({point_id(point)}) is already in {spec['results']}", file=sys.stderr)
        return {}
    _quiet_lightning()
    (row,) = run_population([point], spec)
    append_results(spec["results"], [row])
    try:
        import wandb
    except ImportError:  # W&B not installed: results are in the JSONL file only
        return row
    if wandb.run is not None or os.environ.get("WANDB_SWEEP_ID"):
        run = wandb.init(config=point, job_type="li2-sweep-point")
        run.summary.update({k: v for k, v in row.items() if isinstance(v, (int, float, str, type(None)))})
        run.finish()
    return row


def log_to_wandb(rows: list[dict], spec: dict) -> None:
    """Each finished point as its own W&B run: config = :func:`config_of` its point (the training
    config's keys), history = its per-epoch curves with ``epoch`` as the step, summary = the row's
    scalars, ``group`` = the sweep's name, ``job_type`` ``"sweep-point"``; files under
    ``<results folder>/wandb``. W&B's mode follows ``WANDB_MODE`` (``offline`` without a server).

    Raises:
        ValueError: when W&B is not installed (it names what to install).
    """
    try:
        import wandb
    except ImportError:
        raise ValueError("--wandb / `wandb:` needs W&B: pip install wandb (or leave it out)") from None
    cfg = spec.get("wandb") or {}
    folder = Path(spec["results"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        run = wandb.init(project=cfg.get("project", "li2"), entity=cfg.get("entity"), group=spec["name"],
                         job_type="sweep-point", name=f"{spec['name']}/{row['id']}", dir=str(folder),
                         reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        run.config.update(config_of(row["point"]))  # a config record of its own (offline readers see it)
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")
        curves = row.get("curves") or {}
        for e in range(max((len(c) for c in curves.values()), default=0)):
            run.log({"epoch": e, **{k: c[e] for k, c in curves.items() if e < len(c) and c[e] is not None}}, step=e)
        run.summary.update({k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) and k != "id"}
                           | {"point_id": row["id"]})
        run.finish()


def fit_command(path: str | os.PathLike, index: int) -> str:
    """The ``li2 fit`` command line that trains point ``index`` of a sweep alone (Lightning CLI, configs/base.yaml).

    Its per-epoch ``train/*`` and ``val/*`` equal the point's curves in the sweep (population-only
    settings such as ``eval_every`` only change which test entries the population measured).

    Raises:
        ValueError: on a wrong sweep file or an index out of range.
    """
    import shlex

    points = expand(load_sweep(path))
    if not 0 <= index < len(points):
        raise ValueError(f"--fit-command {index} is out of range; the sweep has points 0..{len(points) - 1}")
    return shlex.join(["li2", *fit_args(points[index])])


def dry_run(path: str | os.PathLike, population_size: Optional[int] = None) -> str:
    """The plan: points, groups, population sizes (nothing is opened or written)."""
    spec = load_sweep(path)
    points = expand(spec)
    done = done_ids(spec["results"])
    lines = [f"{spec['name']}: {len(points)} points in {len(groups(points))} group(s); "
             f"{sum(point_id(p) in done for p in points)} already in {spec['results']}"]
    for members in groups(points).values():
        S = population_size or spec.get("population_size") or population_size_for(members)
        lines.append(f"  {members[0]['group']} K={members[0].get('K', 512)}: {len(members)} points, "
                     f"populations of {S}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """``li2 sweep FILE [--workers N] [--storage URL] [--export OUT] [--dry-run] ...``."""
    from li2_lightning.study import StoreError, UnrecordedResults

    parser = argparse.ArgumentParser(prog="li2 sweep", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="sweep YAML file")
    parser.add_argument("--results", help="results JSONL (default: the file's `results`)")
    parser.add_argument("--storage", help="Optuna store: sqlite:///PATH (default: beside results), "
                                          "journal:PATH, or a database URL")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: this one)")
    parser.add_argument("--export", metavar="OUT", help="write the finished points as JSON lines to OUT and exit")
    parser.add_argument("--population-size", type=int, help="override the file's population_size")
    parser.add_argument("--accelerator", help="override the file's accelerator (cpu, gpu, auto, ...)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--devices", type=int, help="spread each population over N devices or processes "
                                                    "(override the file's devices; default 1)")
    parser.add_argument("--limit", type=int, help="run at most this many populations, then stop")
    parser.add_argument("--heartbeat-interval", type=int, default=20, help="seconds between heartbeats")
    parser.add_argument("--grace-period", type=int, default=60,
                        help="seconds without heartbeat after which a worker counts as dead")
    parser.add_argument("--no-export", action="store_true", help="do not rewrite `results` at the end")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export-wandb", metavar="OUT", help="write a W&B sweep config and exit")
    parser.add_argument("--point_index", "--point-index", type=int, help="run one point (W&B agent)")
    parser.add_argument("--wandb", nargs="?", const="", metavar="PROJECT",
                        help="log each finished point as its own W&B run (project default: the file's `wandb:`, else li2)")
    parser.add_argument("--fit-command", type=int, metavar="I",
                        help="print the `li2 fit` command line that reruns point I alone, and exit")
    args = parser.parse_args(argv)
    try:
        import torch

        # Late in a run Adam's second moments and x² activations of dead nodes fall below 1e-38;
        # subnormal arithmetic on x86 CPUs then slowed a Z89 population from 0.4 s to 17 s an epoch.
        torch.set_flush_denormal(True)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.workers < 1:
            raise ValueError(f"--workers={args.workers} is not accepted; accepted: an integer >= 1")
        if args.export_wandb:
            export_wandb(args.file, args.export_wandb)
            print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent ID` per machine")
            return
        if args.fit_command is not None:
            print(fit_command(args.file, args.fit_command))
            return
        if args.point_index is not None:
            run_point(args.file, args.point_index, args.results)
            return
        if args.dry_run:
            print(dry_run(args.file, args.population_size))
            return
        if args.export:
            sweep = Sweep(args.file, args.storage, results=args.results, heartbeat_interval=args.heartbeat_interval,
                          grace_period=args.grace_period)
            out = sweep.export(args.export)
            print(f"wrote {len(sweep.rows())} rows to {out}", file=sys.stderr)
            return
        run_sweep(args.file, args.results, args.population_size, args.accelerator, args.limit,
                  progress=not args.no_progress, storage=args.storage, workers=args.workers,
                  heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                  export=not args.no_export, threads=args.threads, wandb_project=args.wandb,
                  devices=args.devices)
    except (ValueError, StoreError) as err:
        parser.exit(2, f"li2 sweep: error: {err}\n")
    except UnrecordedResults as err:
        parser.exit(3, f"li2 sweep: error: {err}\n")
    except RuntimeError as err:
        parser.exit(1, f"li2 sweep: error: {err}\n")


if __name__ == "__main__":
    main()
