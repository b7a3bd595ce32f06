"""A sweep file: its keys, reading and checking it, its points and their ids and ``li2 fit`` commands."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from li2_lightning.yaml_files import load_mapping

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
    spec = load_mapping(path, "sweep file", f"a mapping with keys {list(FILE_KEYS)}")
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
