"""Images, histograms and tables of the Li2 callbacks, through each logger's own API.

- W&B: ``wandb.Image``, ``wandb.Histogram``, ``wandb.Table`` in one ``experiment.log`` call at the
  step of the epoch's scalars (``trainer/global_step``, :func:`log_step`);
- TensorBoard: ``SummaryWriter.add_image``, ``add_histogram``, ``add_text`` (the table as
  markdown) at that step;
- any other logger with a folder (CSVLogger, ...): PNG files and CSV tables under
  ``<log_dir>/li2/``, next to its ``metrics.csv``. A histogram goes there as a PNG image, at the
  image cadence.

MLflow is not served natively (not installed here); its runs get the PNG and CSV files in its
``save_dir``. Everything is written from rank zero only; with ``logger=False`` nothing is written.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Optional, Sequence

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


def log_step(trainer: Trainer) -> int:
    """The step at which Lightning logs the epoch's metrics (``val/acc``, the Li2 scalars): that of
    the epoch's last optimizer step, global_step − 1 in ``on_train_epoch_end``."""
    return max(trainer.global_step - 1, 0)


def _wandb_loggers(trainer: Trainer) -> list:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _tensorboard_writers(trainer: Trainer) -> list:
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def file_loggers(trainer: Trainer) -> list:
    """Loggers that get media as files: every one that is neither W&B nor TensorBoard."""
    return [lg for lg in trainer.loggers if not isinstance(lg, (WandbLogger, TensorBoardLogger))]


def has_native(trainer: Trainer) -> bool:
    """Whether a logger takes images and histograms through its own API (W&B, TensorBoard)."""
    return bool(_wandb_loggers(trainer) or _tensorboard_writers(trainer))


def media_dir(trainer: Trainer) -> str:
    """``<log_dir>/li2`` of the first file logger (``<default_root_dir>/li2`` if it has no folder)."""
    for lg in file_loggers(trainer):
        d = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
        if d:
            return os.path.join(d, "li2")
    return os.path.join(trainer.default_root_dir, "li2")


def _wandb():
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency of the package
        raise ModuleNotFoundError(
            "the Li2 callbacks' W&B histograms, images and tables need wandb: `pip install wandb`, "
            "or use another logger (TensorBoard, CSV)") from err
    return wandb


def define_summaries(trainer: Trainer, maxima: Sequence[str] = (), minima: Sequence[str] = ()) -> None:
    """W&B run-summary rules: the best value of each key in ``maxima`` (max) and ``minima`` (min,
    e.g. a stage's first epoch), keeping Lightning's step metric ``trainer/global_step``."""
    if not trainer.is_global_zero:
        return
    for lg in _wandb_loggers(trainer):
        for keys, how in ((maxima, "max"), (minima, "min")):
            for k in keys:
                lg.experiment.define_metric(k, step_metric="trainer/global_step", summary=how)


def log_image(trainer: Trainer, key: str, rgb: np.ndarray, caption: str, file_name: Optional[str]) -> None:
    """An (H, W, 3) uint8 image to every logger; ``file_name`` (a PNG under :func:`media_dir`)
    for the file loggers, which get nothing when it is None."""
    if not trainer.is_global_zero:
        return
    for lg in _wandb_loggers(trainer):
        lg.experiment.log({key: _wandb().Image(rgb, caption=caption), "trainer/global_step": log_step(trainer)})
    for w in _tensorboard_writers(trainer):
        w.add_image(key, rgb, global_step=log_step(trainer), dataformats="HWC")
    if file_name is not None and file_loggers(trainer):
        from matplotlib.image import imsave

        path = os.path.join(media_dir(trainer), file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        imsave(path, rgb)


def log_histogram(trainer: Trainer, key: str, values: np.ndarray) -> None:
    """A histogram to the loggers that have one (W&B, TensorBoard)."""
    if not trainer.is_global_zero:
        return
    for lg in _wandb_loggers(trainer):
        lg.experiment.log({key: _wandb().Histogram(values), "trainer/global_step": log_step(trainer)})
    for w in _tensorboard_writers(trainer):
        w.add_histogram(key, values, global_step=log_step(trainer))


def log_table(trainer: Trainer, key: str, columns: Sequence[str], rows: list[list[Any]], file_name: str,
              summary: Optional[dict[str, Any]] = None) -> None:
    """A table (the whole table each time) to every logger: a W&B Table (plus ``summary`` in the
    run summary), TensorBoard text (markdown), or ``file_name`` as CSV under :func:`media_dir`."""
    if not trainer.is_global_zero:
        return
    for lg in _wandb_loggers(trainer):
        lg.experiment.log({key: _wandb().Table(columns=list(columns), data=rows),
                           "trainer/global_step": log_step(trainer)})
        for k, v in (summary or {}).items():
            lg.experiment.summary[k] = v
    for w in _tensorboard_writers(trainer):
        def cell(v: Any) -> str:
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        md += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        w.add_text(key, "\n".join(md), global_step=log_step(trainer))
    if file_loggers(trainer):
        path = os.path.join(media_dir(trainer), file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(columns)
            wr.writerows(rows)
