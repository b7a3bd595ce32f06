"""A population spread over several devices or processes, each rank training its own members.

Members of a :class:`~li2_lightning.population.PopulationModule` never interact, so ranks need no
gradient exchange at all: rank r of N keeps members r, r+N, r+2N, ... (strided, so a sweep's
population, sorted by train size, is balanced) and trains them as its own smaller population.

Why not Lightning's ``DDPStrategy`` as it is: it wraps the module in ``DistributedDataParallel``,
which broadcasts rank 0's parameters at the start and all-reduces (averages) every gradient, so the
members would be mixed; and giving each rank its own slice of the stacked parameters is refused by
DDP, which checks that every rank holds parameters of the same shapes. :class:`MemberParallelStrategy`
is a ``DDPStrategy`` that does not wrap the module (everything else is Lightning's: launchers,
process group, gloo on CPU, NCCL on GPUs, one thread per rank). It cuts the module to this rank's
members in ``setup`` and, when training ends, all-gathers every rank's parameters and per-epoch
metrics so that every rank holds the whole population again in the original member order:
``results()``, ``history()`` and ``lightning_metrics()`` then describe all members. With the spawn
launcher (the default here, as ``ddp_spawn``) the main process gets the whole population back too.

Collective decisions stay exact: ``stop_at_test_acc`` stops only when every member on every rank
has reached it. Members with their own lives (``configure_members``: a stop policy, refill from a
sweep's store) are not supported across devices: their source and sink talk to one process's store.
"""

from __future__ import annotations

import io
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher


def member_slots(S: int, rank: int, world_size: int) -> list[int]:
    """Members of a population of S that rank ``rank`` of ``world_size`` trains: rank, rank+N, ..."""
    return list(range(rank, S, world_size))


class MemberParallelStrategy(DDPStrategy):
    """``DDPStrategy`` without ``DistributedDataParallel``: each rank trains its own members.

    Use it like ``ddp``: ``Trainer(accelerator="cpu", devices=2, strategy=MemberParallelStrategy())``,
    or through :func:`~li2_lightning.population.train_population`, which picks it when ``devices``
    asks for more than one. Only for a :class:`~li2_lightning.population.PopulationModule`.

    Args:
        start_method: ``"spawn"`` (default: runs inside pytest and notebooks; the module and the
            Trainer's callbacks must pickle), ``"fork"`` (CPU only) or ``"popen"`` (Lightning's
            ``ddp``: the script is run again for every other rank, which must then reach the same
            ``fit``).
        **kwargs: passed to ``DDPStrategy`` (``process_group_backend``, ``timeout``, ...).
    """

    strategy_name = "member_parallel"

    def __init__(self, start_method: str = "spawn", **kwargs: Any) -> None:
        super().__init__(start_method=start_method, **kwargs)
        self._full: Optional[dict] = None

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = _PopulationLauncher(self, start_method=self._start_method)

    def setup(self, trainer: pl.Trainer) -> None:
        module = self.lightning_module
        from li2_lightning.population import PopulationModule

        if not isinstance(module, PopulationModule):
            raise ValueError(f"MemberParallelStrategy trains a PopulationModule, not {type(module).__name__}; "
                             "for other modules use strategy='ddp'")
        if module._dynamic:
            raise ValueError("a population with its own member lives (configure_members: policy, refill) cannot be "
                             "spread over devices; accepted: devices=1 for it, or no policy")
        if module.S < self.world_size:
            raise ValueError(f"devices={self.world_size} processes for a population of {module.S} members; "
                             f"accepted: at most {module.S} devices (one member each at least)")
        if self._full is None:  # the original population, to restore the order at the end
            self._full = {"S": module.S, "members": list(module.members), "split_seeds": list(module.split_seeds),
                          "n_trains": list(module.n_trains), "rows": {k: list(v) for k, v in module._row_lists.items()}}
        module.keep_members(member_slots(module.S, self.global_rank, self.world_size))
        super().setup(trainer)

    def configure_ddp(self) -> None:
        """No ``DistributedDataParallel``: members never exchange gradients or parameters."""

    def on_train_end(self) -> None:
        """Every rank gets the whole population back: parameters and per-epoch metrics, member order kept."""
        module = self.lightning_module
        full = self._full
        mine = {"params": [p.detach().cpu() for p in (module.W, module.V, *module.U)],
                "hist": None if module._hist is None else module._hist[: module._steps].cpu(),
                "final": None if module._final is None else module._final.cpu(), "steps": module._steps,
                "stopped_early": module._stopped_early}
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, mine)
        steps = {p["steps"] for p in parts}
        assert len(steps) == 1, f"ranks trained different numbers of steps: {steps}"  # decisions are collective
        order = [s for r in range(self.world_size) for s in member_slots(full["S"], r, self.world_size)]
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))

        def merge(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
            return torch.cat(tensors, dim).index_select(dim, inverse)

        with torch.no_grad():
            for i, p in enumerate((module.W, module.V, *module.U)):
                p.data = merge([q["params"][i] for q in parts], 0).to(p.device, p.dtype)
                p.grad = None
        module.S = full["S"]
        module.members, module.split_seeds, module.n_trains = full["members"], full["split_seeds"], full["n_trains"]
        module._row_lists = {k: list(v) for k, v in full["rows"].items()}
        for prefix in ("tr", "te"):
            module._register_rows(prefix, module._row_lists[prefix])
        device = module.W.device
        if parts[0]["hist"] is not None:
            module._hist = merge([q["hist"] for q in parts], 1).to(device)
        if parts[0]["final"] is not None:
            module._final = merge([q["final"] for q in parts], 0).to(device)
        module._stopped_early = any(q["stopped_early"] for q in parts)
        super().on_train_end()


class _PopulationLauncher(_MultiProcessingLauncher):
    """The spawn/fork launcher, also carrying the population's per-epoch metrics to the main process
    (its parameters come back through Lightning's own weights file)."""

    def get_extra_results(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        m = trainer.lightning_module
        state = {"hist": None if m._hist is None else m._hist[: m._steps].cpu(), "steps": m._steps,
                 "final": None if m._final is None else m._final.cpu(), "stopped_early": m._stopped_early}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        extra["population_bytes"] = buffer.getvalue()
        return extra

    def update_main_process_results(self, trainer: pl.Trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
        state = torch.load(io.BytesIO(extra["population_bytes"]), weights_only=True)
        m = trainer.lightning_module
        m._hist, m._steps, m._final, m._stopped_early = (state["hist"], state["steps"], state["final"],
                                                         state["stopped_early"])
