"""AccuracyMilestones: the first epoch each metric reaches its threshold (epochs to grok)."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from typing_extensions import override

from li2_lightning.callbacks.base import log_scalars, warn_missing_key


class AccuracyMilestones(pl.Callback):
    """Record the first epoch at which each (metric, threshold) pair is reached.

    The defaults give the numbers grokking studies report: train accuracy 1, and test accuracy
    past 0.5 and 0.99. Each milestone is logged once, when it is reached, as
    ``milestones/<metric>>=<threshold>`` with the epoch as value (through ``pl_module.log_dict``,
    so other callbacks see it in ``trainer.callback_metrics``; a W&B summary shows it), and
    ``milestones`` holds them all for code that reads them after ``fit``. Works with any module
    that logs the named metrics (a metric that is never logged is warned about once); kept in
    ``state_dict`` so a resumed run remembers.

    Args:
        metrics: logged metric names, one per milestone.
        thresholds: the value each metric must reach (>=), same length as ``metrics``.

    Raises:
        ValueError: if the lists differ in length or are empty.
    """

    def __init__(
        self,
        metrics: Optional[list[str]] = None,
        thresholds: Optional[list[float]] = None,
    ) -> None:
        metrics = ["train/acc", "val/acc", "val/acc"] if metrics is None else list(metrics)
        thresholds = [1.0, 0.5, 0.99] if thresholds is None else list(thresholds)
        if not metrics or len(metrics) != len(thresholds):
            raise ValueError(f"metrics={metrics!r} and thresholds={thresholds!r} are not accepted; accepted: "
                             "two non-empty lists of the same length")
        self.pairs = list(zip(metrics, thresholds))
        self.milestones: dict[str, int] = {}
        self._warned: set[str] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pairs=self.pairs)

    @staticmethod
    def key(metric: str, threshold: float) -> str:
        """The name a milestone is logged under."""
        return f"milestones/{metric}>={threshold:g}"

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        reached = {}
        for metric, threshold in self.pairs:
            key = self.key(metric, threshold)
            value = trainer.callback_metrics.get(metric)
            if value is None:
                warn_missing_key(self, self._warned, trainer, "metrics", metric,
                                 f"the milestone {key!r} cannot be reached")
            elif key not in self.milestones and float(value) >= threshold:
                self.milestones[key] = trainer.current_epoch
                reached[key] = float(trainer.current_epoch)
        log_scalars(pl_module, reached)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"milestones": dict(self.milestones)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.milestones = dict(state_dict["milestones"])
