"""Population training: S independent nets trained as one batched computation.

A sweep point of the Li2 experiments is tiny (one Z_M table, one 2M×K and one K×M matrix); one of
them cannot keep a machine busy. :class:`PopulationModule` stacks S members of the same shape,
W (S, 2M, K) and V (S, K, M), and trains them in one forward and backward per step:

- every member has its own :class:`MemberSettings` (init seed, split seed, train size, learning
  rate, weight decay, Muon step, V init scale); its train and test rows are index lists into the M² table (padded to the largest
  member, with a 0/1 weight), so each step yields every member's train metrics (at the parameters
  the step saw) and test metrics from the same batched forward;
- the loss is the sum of the members' losses, so member s's gradient is exactly the gradient of its
  own loss; :class:`PopulationOptimizer` applies the :class:`OptimizerSpec` (Adam, AdamW, SGD, or
  Muon on W with any preset and Adam or AdamW on V, exactly as ``Li2Module`` would be given it)
  through :mod:`li2_lightning.functional.updates` with (S,) hyperparameters, so members never
  interact. The forward and losses are :mod:`li2_lightning.functional.model`'s with a member dim.

Member s is initialised exactly as ``Li2Module`` is under ``seed_everything(seed_s)`` (the global
RNG seeded, then ``TwoLayerNet`` drawn, W first), and its metrics follow ``Li2Module``'s timing:
``train/acc`` at epoch e is measured at θ_e (before step e), ``val/acc`` at θ_{e+1}.
``tests/test_population.py`` checks members against separate ``Li2Module`` runs for every optimizer.

Per-member results (:meth:`PopulationModule.results`) count *steps*: ``epochs_to_test_acc_0.5 = t``
means the parameters after t full-batch steps were the first with test accuracy ≥ 0.5.

Members may also live their own lives (:meth:`PopulationModule.configure_members`): each has its
own budget, its stages are tracked by the rule of docs/theory.md §7 from batched observables, a
:class:`~li2_lightning.population_policy.StopPolicy` stops those that are done or stalled, and a
stopped member's slot is frozen (the optimizer's ``active`` mask) or taken by the next pending
member, with a fresh init, split, optimizer state and step count (continuous batching).

Layout: :mod:`.settings` (:class:`MemberSettings`, :func:`make_members`, :class:`OptimizerSpec`),
:mod:`.optimizer` (:class:`PopulationOptimizer`), :mod:`.module` (:class:`PopulationModule`,
:func:`train_population`), :mod:`.members` (members' own lives), :mod:`.results` (results rows,
:func:`coverage`).
"""

from li2_lightning.population.module import PopulationModule, train_population
from li2_lightning.population.optimizer import PopulationOptimizer
from li2_lightning.population.results import THRESHOLDS, coverage
from li2_lightning.population.settings import OPTIMIZERS, MemberSettings, OptimizerSpec, make_members

__all__ = ["OPTIMIZERS", "THRESHOLDS", "MemberSettings", "OptimizerSpec", "PopulationModule", "PopulationOptimizer",
           "coverage", "make_members", "train_population"]
