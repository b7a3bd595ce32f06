"""A sweep on W&B: each finished point as its own run, or a W&B grid sweep over the points."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from li2_lightning.sweeps.spec import config_of, expand, load_sweep


def export_wandb(path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write a W&B sweep config that runs each point of ``path`` as one agent run."""
    spec = load_sweep(path)
    n = len(expand(spec))
    config = {"name": spec["name"], "program": "li2", "method": "grid",
              "parameters": {"point_index": {"values": list(range(n))}},
              "command": ["li2", "sweep", str(path), "${args}"]}
    Path(out).write_text(yaml.safe_dump(config, sort_keys=False))
    return config


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
