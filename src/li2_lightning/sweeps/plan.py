"""Which points train together: groups of compatible points, populations, their size in memory."""

from __future__ import annotations

import json
from typing import Any, Optional

from li2_lightning.sweeps.spec import (_SIZE_KEYS, DEFAULT_POPULATION_CAP, MEMBER_KEYS, OPTIMIZER_KEYS,
                                       SHARED_KEYS)


def group_key(point: dict) -> str:
    """What points must share to be trained in one population (one Optuna study per key)."""
    shared = {k: point.get(k) for k in SHARED_KEYS}
    shared["_size_key"] = next((k for k in _SIZE_KEYS if k in point), None)
    shared["_muon_lr"] = "muon_lr" in point
    return json.dumps(shared, sort_keys=True, default=str)


def pack(points: list[dict], population_size: int) -> list[list[dict]]:
    """Split points into populations: same :func:`group_key`, sorted by train size within a
    population (less padding), at most ``population_size`` each."""
    out = []
    for members in groups(points).values():
        out += [members[i : i + population_size] for i in range(0, len(members), population_size)]
    return out


def groups(points: list[dict]) -> dict[str, list[dict]]:
    """Points by :func:`group_key`, in first-appearance order, each sorted by train size."""
    buckets: dict[str, list[dict]] = {}
    for p in points:
        buckets.setdefault(group_key(p), []).append(p)
    for key, members in buckets.items():
        size_key = next((k for k in _SIZE_KEYS if k in members[0]), None)
        if size_key:
            buckets[key] = sorted(members, key=lambda p: p[size_key])
    return buckets


def population_size_for(members: list[dict], available: Optional[int] = None,
                        cap: int = DEFAULT_POPULATION_CAP, device: str = "cpu") -> int:
    """The most members of this group that fit in free memory together (at most ``cap``).

    The plan is ``memory.population_bytes``: a fixed part, the group's data once, and each member at
    ``memory.member_bytes`` of its largest train size.

    Raises:
        ValueError: if not even one member fits, before anything is allocated.
    """
    from li2_lightning import memory
    from li2_lightning.data import P_STAR_C, resolve_n_train
    from li2_lightning.groups import make_group

    first = members[0]
    M = make_group(first["group"]).order
    K = int(first.get("K", 512))
    n = max(resolve_n_train(M, m.get("train_fraction"), m.get("n_train"), m.get("p_star_multiplier"),
                            m.get("p_star_c", P_STAR_C)) for m in members)
    est = memory.estimate_bytes(M, K, n, M * M - n)
    per_member = memory.member_bytes(est)
    free = ((memory.available_bytes(device) if available is None else available)
            - memory.SAFETY * est.data - memory.POPULATION_FIXED)
    S = int(free // per_member)
    if S < 1:
        raise ValueError(f"one member of group {first['group']} (M={M}, K={K}, {n} train pairs) needs about "
                         f"{per_member / 1e9:.2f} GB but {max(free, 0) / 1e9:.2f} GB is free; lower K or the group order")
    return min(S, cap, len(members))


def build_population(members: list[dict]):
    """A ``PopulationModule`` for points that share their non-member settings."""
    from li2_lightning.population import MemberSettings, OptimizerSpec, PopulationModule

    first = members[0]
    kwargs: dict[str, Any] = {k: first[k] for k in SHARED_KEYS if k in first and k not in
                              ("max_epochs",) + OPTIMIZER_KEYS}
    spec = {k: first[k] for k in OPTIMIZER_KEYS if k in first}
    if "optimizer" in spec:
        spec["name"] = spec.pop("optimizer")
    if "betas" in spec:
        spec["betas"] = tuple(spec["betas"])
    kwargs["optimizer"] = OptimizerSpec(**spec)
    kwargs["members"] = [MemberSettings(**{k: m[k] for k in MEMBER_KEYS if k in m}) for m in members]
    return PopulationModule(**kwargs)
