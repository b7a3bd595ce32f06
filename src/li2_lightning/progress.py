"""A progress bar that counts epochs, for full-batch runs of one step an epoch."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm


class EpochProgressBar(ProgressBar):
    """One bar over ``max_epochs`` showing the progress-bar metrics (val/acc, the stage, ...).

    Lightning's default bar draws a training and a validation bar every epoch, which for a
    full-batch run is thousands of bars and a visible share of each step's time.

    Args:
        refresh_rate: redraw every this many epochs; 0 disables the bar.
    """

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__()
        if refresh_rate < 0:
            raise ValueError(f"refresh_rate={refresh_rate!r} is not accepted; accepted: an integer >= 0")
        self.refresh_rate = refresh_rate
        self._bar = None

    @property
    def is_enabled(self) -> bool:
        return self.refresh_rate > 0

    def disable(self) -> None:
        self.refresh_rate = 0

    def enable(self) -> None:
        pass

    def on_train_start(self, trainer, pl_module) -> None:
        if self.is_enabled and trainer.is_global_zero:
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            self._bar = tqdm(total=total, initial=trainer.current_epoch, desc="epochs",
                             dynamic_ncols=True, file=sys.stdout, smoothing=0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._bar is None:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.refresh_rate == 0 or epoch == trainer.max_epochs:
            self._bar.n = epoch
            self._bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self._bar.refresh()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in metrics.items()}
