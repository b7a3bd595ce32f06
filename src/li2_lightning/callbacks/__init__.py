"""Lightning callbacks that watch Li2 feature learning on any module with ``li2_probe()``.

- :class:`GFStructureMonitor`: G_F alignment, norm, independence, r_V, layer movement
  (``li2/gf``, ``li2/W``, ``li2/V``, ``li2/F``).
- :class:`EnergyMonitor`: per-node energy E(w/‖w‖) against an exact irrep maximum (``li2/energy``).
- :class:`FeatureMonitor`: purity, coverage, node × irrep heatmap (``li2/feat``).
- :class:`StageMonitor`: lazy → independent → interactive → done / stalled (``stage/``).
- :class:`AccuracyMilestones`: first epochs of train accuracy 1 and test accuracy 0.5 / 0.99.

The four monitors share :class:`Li2Callback` (cadence, one snapshot per epoch, ``log_dict``,
history, ``state_key``). See docs/callbacks.md; ``callbacks/li2.yaml`` adds all four to a
LightningCLI run.
"""

from li2_lightning.callbacks.base import Li2Callback
from li2_lightning.callbacks.energy_monitor import EnergyMonitor
from li2_lightning.callbacks.feature_monitor import FeatureMonitor
from li2_lightning.callbacks.gf_structure import GFStructureMonitor
from li2_lightning.callbacks.layer_monitor import LayerMonitor
from li2_lightning.callbacks.milestones import AccuracyMilestones
from li2_lightning.callbacks.stage_monitor import StageMonitor

__all__ = ["Li2Callback", "GFStructureMonitor", "EnergyMonitor", "FeatureMonitor", "StageMonitor", "AccuracyMilestones",
           "LayerMonitor"]
