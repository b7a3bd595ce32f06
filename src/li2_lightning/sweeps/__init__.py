"""``li2 sweep``'s parts: the sweep file (:mod:`.spec`), its plan (:mod:`.plan`), result rows
(:mod:`.rows`), the worker (:mod:`.worker`) and W&B runs (:mod:`.wandb_runs`); the command line and
the names users import are in :mod:`li2_lightning.sweep`."""
