"""Muon's sharded Newton-Schulz mode under torch.distributed on CPU (gloo).

Kept free of Lightning imports: every spawned rank imports this module.
"""

from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from li2_lightning.optim import Muon

SHAPES = [(6, 10), (10, 6), (6, 6), (6, 12), (12, 3)]  # five chained matrices: ranks own 3 and 2


def _stack(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Module()
    for i, (m, n) in enumerate(SHAPES):
        setattr(net, f"M{i}", nn.Parameter(torch.randn(m, n) / math.sqrt(m)))
    net.bias = nn.Parameter(torch.zeros(SHAPES[-1][1]))
    return net


def _loss(net: nn.Module, rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own data shard
    h = torch.randn(8, SHAPES[0][0], generator=g)
    for i in range(len(SHAPES)):
        h = torch.tanh(h @ getattr(net, f"M{i}"))
    return (h + net.bias).pow(2).mean()


def _sharded_worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for preset in ("li2", "keller"):
            _compare_sharded_to_plain(rank, world, preset)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalization: gloo's worker threads can still hold tensors there and abort
    # the process (SIGABRT, "terminate called without an active exception"; ~1 run in 20 here).
    os._exit(0)


def _compare_sharded_to_plain(rank: int, world: int, preset: str) -> None:
    nets = {mode: _stack(seed=0) for mode in ("plain", "sharded")}
    opts = {mode: Muon(list(net.named_parameters()), lr=0.05, weight_decay=0.1, preset=preset,
                       muon_params="M*", adam_lr=1e-2, distributed=(mode == "sharded"))
            for mode, net in nets.items()}
    for step in range(4):
        for mode, net in nets.items():
            opts[mode].zero_grad()
            _loss(net, rank, step).backward()
            for p in net.parameters():  # what DDP does: average the gradients
                dist.all_reduce(p.grad)
                p.grad /= world
            opts[mode].step()
    for (name, p), q in zip(nets["plain"].named_parameters(), nets["sharded"].parameters()):
        assert torch.equal(p, q), f"{preset}, rank {rank}: sharded differs from plain on {name}"
        gathered = [torch.empty_like(q) for _ in range(world)]
        dist.all_gather(gathered, q.detach().contiguous())
        assert all(torch.equal(gathered[0], t) for t in gathered), f"{preset}: {name} differs across ranks"
        state_p, state_q = opts["plain"].state[p], opts["sharded"].state[q]
        assert state_p.keys() == state_q.keys()
        assert all(torch.equal(state_p[k], state_q[k]) for k in state_p), f"{preset}: state of {name}"


def test_sharded_newton_schulz_equals_plain_on_two_ranks():
    """Two gloo ranks, presets li2 and keller: the sharded mode (each rank runs Newton-Schulz for
    its round-robin share of five matrices) ends bit-identical to the plain mode, in parameters
    and optimizer state, and identical across ranks."""
    with tempfile.TemporaryDirectory(prefix="li2_muon_gloo_") as tmp:  # outlives other sessions' pruning
        mp.spawn(_sharded_worker, args=(2, os.path.join(tmp, "init")), nprocs=2, join=True)
