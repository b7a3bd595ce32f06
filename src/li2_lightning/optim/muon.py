"""Muon on chosen matrices, Adam or AdamW on the rest, in one `torch.optim.Optimizer`.

The section below is Markdown, written to be pasted into the README.

### Muon (`li2_lightning.optim.Muon`)

Muon replaces a matrix update G = U D Vᵀ by U Vᵀ, computed with a few Newton-Schulz steps. Li2
argues that this helps hidden nodes spread over distinct features (docs/theory.md §8: an ascent direction for
the energy that damps directions the learned features have already taken). `Muon` is one
optimizer: Muon on the parameters `muon_params` names (default `"W"`, the first layer, as in the
author's runs), Adam or AdamW on all others (the top layer `V`). Being one optimizer, Lightning's
automatic optimization, gradient clipping, LR schedulers (they scale every group's `lr`, Muon's
and Adam's alike) and checkpoints work as with Adam. Choose it like any optimizer:

```yaml
model:
  optimizer:
    class_path: li2_lightning.optim.Muon
    init_args: {lr: 0.02, preset: li2, adam_lr: 1.0e-3, weight_decay: 2.0e-4}
```

`lr` is Muon's step: every singular direction of W moves by about `lr` per step, so an entry of a
142×2048 W moves by about lr/√2048. `adam_lr` (default: `lr`) is Adam's. At Adam's learning rate
Muon's steps on W are tens of times smaller than Adam's, so tune the two separately.

| setting | `li2` (default) | `keller` | `torch` |
|---|---|---|---|
| momentum buffer | m ← 0.99 m + 0.01 g | m ← 0.95 m + 0.05 g | m ← 0.95 m + 0.05 g |
| Newton-Schulz input | m (no Nesterov) | 0.05 g + 0.95 m (Nesterov) | 0.05 g + 0.95 m (Nesterov) |
| coefficients | five per-step (a, b, c) (docs/theory.md §8) | (3.4445, −4.7750, 2.0315) each step | same quintic each step |
| NS precision | float32 | float32; `ns_dtype: bfloat16` as Keller's | bfloat16 (fixed by torch) |
| normalization | m / (‖m‖_F + 1e-7) | same | m / max(‖m‖_F, 1e-7) |
| singular values after 5 steps | ≈ [0.89, 1.16] | ≈ [0.68, 1.20] | ≈ [0.68, 1.20] |
| shape scaling | none | lr · √max(1, rows/cols) | lr · √max(1, rows/cols) |
| Muon weight decay | W ← W(1 − lr·wd), then the update | same | same |
| other parameters | Adam, coupled L2 (g + wd·p) | AdamW (decoupled) | AdamW (decoupled) |
| `distributed: true` | supported | supported | not supported |

Every entry can be overridden by its argument (`momentum`, `nesterov`, `ns_steps`, `ns_dtype`,
`adam_decoupled`, `adam_betas`, `adam_eps`, `adam_weight_decay`).

- `li2` is the author's Muon as docs/theory.md §8 states it.
- `keller` follows KellerJordan/Muon (`muon_update`): Nesterov-style interpolation, the fixed
  quintic tuned for slope at zero (fast but less exact), √max(1, rows/cols) so that tall matrices
  get RMS-matched steps.
- `torch` reproduces `torch.optim.Muon` (torch ≥ 2.9) with this optimizer's settings, bit for bit
  on CPU (`tests/test_optim_muon.py` steps both); note that torch's own default `weight_decay` is
  0.1, here it is `weight_decay` (0.0 by default).
- The singular-value bands hold for singular values above 0.2% of ‖G‖_F (measured in
  `tests/test_optim_newton_schulz.py`); smaller ones are raised but may end below the band.

Multi-GPU: under DDP every rank holds the same all-reduced gradients and runs the same update, so
ranks stay identical and rank zero's checkpoint is complete. With `distributed: true` and several
processes, rank r runs Newton-Schulz only for the Muon matrices i ≡ r (mod world size), and one
all_reduce per step hands every result to every rank (bit-identical to the plain mode); momentum
is still updated on every rank, so each holds the complete optimizer state. It pays off only with
many matrices (the two-layer Li2 net has one); without an initialized process group it is the
plain mode.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
from torch import Tensor

# the module, not its names: li2_lightning.functional.updates imports this package's kernel
import li2_lightning.functional.updates as updates
from li2_lightning.optim.newton_schulz import LI2_COEFFICIENTS

__all__ = ["Muon"]

PRESETS = ("li2", "keller", "torch")


def _dtype_name(ns_dtype: str | torch.dtype | None, preset: str) -> str:
    """Validate ``ns_dtype`` and return it as a name (``"float32"`` or ``"bfloat16"``)."""
    if isinstance(ns_dtype, torch.dtype):
        ns_dtype = {v: k for k, v in updates.NS_DTYPES.items()}.get(ns_dtype, str(ns_dtype))
    if preset == "torch":
        if ns_dtype not in (None, "bfloat16"):
            raise ValueError(
                f"`ns_dtype`={ns_dtype!r} with preset='torch': torch.optim.Muon always runs Newton-Schulz in "
                "bfloat16; leave `ns_dtype` unset or use preset='li2' or 'keller' for float32."
            )
        return "bfloat16"
    if ns_dtype is None:
        return "float32"
    if ns_dtype not in updates.NS_DTYPES:
        raise ValueError(f"`ns_dtype`={ns_dtype!r} is not supported; accepted: {sorted(updates.NS_DTYPES)}.")
    return ns_dtype


def _check_range(name: str, value: float, low: float, high: float = math.inf, high_open: bool = False) -> None:
    ok = low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"`{name}`={value!r} is out of range; accepted: [{low}, {high}{bracket}.")


class Muon(torch.optim.Optimizer):
    """Muon on the matrices ``muon_params`` names, Adam (coupled L2) or AdamW on the others.

    See the module docstring for how the presets differ. Parameter groups carry ``use_muon``;
    LR schedulers change every group's ``"lr"`` (Muon's and Adam's together, by the same factor).

    Args:
        params: named parameters, ``list(module.named_parameters())`` (what Li2Module passes); plain
            tensors (named ``"0"``, ``"1"``, … for matching); or param-group dicts that each set
            ``use_muon`` (then ``muon_params`` is not used; other group keys override the defaults).
        lr: Muon's learning rate.
        muon_params: fnmatch pattern, or list of patterns, for the parameters Muon updates, matched
            against the full name (``net.W``) and its last dotted component (``W``). Every pattern
            must match at least one parameter, and everything matched must be 2-D.
        preset: ``"li2"`` (docs/theory.md §8, the author's runs), ``"keller"`` (KellerJordan/Muon) or
            ``"torch"`` (``torch.optim.Muon``).
        weight_decay: decoupled decay of the Muon matrices, W ← W(1 − lr·wd) before the update.
        momentum: EMA factor β of the momentum buffer m ← βm + (1 − β)g; default 0.99 for ``li2``,
            0.95 otherwise.
        nesterov: orthogonalize (1 − β)g + βm instead of m; default False for ``li2``, True otherwise.
        ns_steps: Newton-Schulz steps (``li2`` has a schedule of at most 5).
        ns_dtype: ``"float32"`` or ``"bfloat16"`` for Newton-Schulz; default float32 (``torch``:
            bfloat16 only).
        adam_lr: Adam's learning rate; default ``lr``.
        adam_betas: Adam's (β₁, β₂).
        adam_eps: Adam's ε.
        adam_weight_decay: Adam's weight decay; default ``weight_decay``.
        adam_decoupled: False for Adam with coupled L2 (g ← g + wd·p, the author's runs), True for
            AdamW; default False for ``li2``, True otherwise.
        distributed: spread Newton-Schulz over the ranks of an initialized process group (module
            docstring); ignored with a single process.

    Raises:
        ValueError: unknown preset, a ``muon_params`` pattern matching no parameter (the message
            lists the names there are), Muon on a parameter that is not 2-D, a setting out of range.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        muon_params: str | list[str] = "W",
        preset: Literal["li2", "keller", "torch"] = "li2",
        weight_decay: float = 0.0,
        momentum: float | None = None,
        nesterov: bool | None = None,
        ns_steps: int = 5,
        ns_dtype: str | None = None,
        adam_lr: float | None = None,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        adam_weight_decay: float | None = None,
        adam_decoupled: bool | None = None,
        distributed: bool = False,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"`preset`={preset!r} is not a Muon preset; accepted: {list(PRESETS)}.")
        li2 = preset == "li2"
        momentum = (0.99 if li2 else 0.95) if momentum is None else momentum
        nesterov = (not li2) if nesterov is None else nesterov
        adam_lr = lr if adam_lr is None else adam_lr
        adam_weight_decay = weight_decay if adam_weight_decay is None else adam_weight_decay
        adam_decoupled = (not li2) if adam_decoupled is None else adam_decoupled
        for name, value in (("lr", lr), ("adam_lr", adam_lr), ("weight_decay", weight_decay),
                            ("adam_weight_decay", adam_weight_decay)):
            _check_range(name, value, 0.0)
        _check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        _check_range("adam_eps", adam_eps, 0.0)
        if len(adam_betas) != 2:
            raise ValueError(f"`adam_betas`={adam_betas!r} must be a pair (β₁, β₂).")
        for i, beta in enumerate(adam_betas):
            _check_range(f"adam_betas[{i}]", beta, 0.0, 1.0, high_open=True)
        max_steps = len(LI2_COEFFICIENTS) if li2 else 99
        if not (isinstance(ns_steps, int) and 1 <= ns_steps <= max_steps):
            raise ValueError(
                f"`ns_steps`={ns_steps!r} is not supported for preset={preset!r}; accepted: an integer in "
                f"[1, {max_steps}]" + (" (the li2 schedule has five per-step triples)." if li2 else ".")
            )
        dtype_name = _dtype_name(ns_dtype, preset)
        if distributed and preset == "torch":
            raise ValueError(
                "`distributed`=True with preset='torch': torch.optim.Muon has no sharded mode; use preset "
                "'li2' or 'keller', or distributed=False (plain mode is exact under DDP)."
            )

        self.preset = preset
        self.distributed = bool(distributed)
        base = updates.MUON_PRESETS[preset]
        self._muon_defaults: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                   nesterov=nesterov, ns_steps=ns_steps)
        if preset == "torch":  # torch.optim.Muon's own group keys: checkpoints keep their layout
            self._muon_defaults.update(ns_coefficients=base.coefficients[0], eps=base.ns_eps, adjust_lr_fn=None)
        else:
            self._muon_defaults.update(ns_coefficients=base.coefficients[:ns_steps], ns_dtype=dtype_name,
                                       ns_eps=base.ns_eps, shape_scaling=base.shape_scaling)
        self._adam_defaults: dict[str, Any] = dict(
            lr=adam_lr, betas=tuple(adam_betas), eps=adam_eps, weight_decay=adam_weight_decay,
            decoupled_weight_decay=adam_decoupled,
        )
        super().__init__(_split(params, muon_params), defaults={"use_muon": False})

    # ---------------------------------------------------------------- groups and pickling

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``use_muon`` (default False) picks the Muon or the Adam defaults."""
        use_muon = bool(param_group.get("use_muon", False))
        if use_muon:
            for name, p in _named(param_group["params"], prefix="Muon group parameter "):
                if p.ndim != 2:
                    raise ValueError(
                        f"`muon_params` selects {name!r} with shape {tuple(p.shape)}, but Muon updates only "
                        f"matrices (2-D parameters); narrow the pattern so that {name!r} is left to Adam."
                    )
        defaults = self._muon_defaults if use_muon else self._adam_defaults
        super().add_param_group({**defaults, **param_group, "use_muon": use_muon})

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(preset=self.preset, distributed=self.distributed,
                     _muon_defaults=self._muon_defaults, _adam_defaults=self._adam_defaults)
        return state


    # ---------------------------------------------------------------- the step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step: Muon on the ``use_muon`` groups, Adam or AdamW on the others.

        Args:
            closure: re-evaluates the model and returns the loss (Lightning passes one).

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon_step([g for g in self.param_groups if g["use_muon"]])
        for group in self.param_groups:
            if group["use_muon"]:
                continue
            for p in group["params"]:
                if p.grad is not None:
                    updates.adam_(p, p.grad, self.state[p], lr=group["lr"], weight_decay=group["weight_decay"],
                                  betas=group["betas"], eps=group["eps"],
                                  decoupled=group["decoupled_weight_decay"])
        return loss

    def _preset(self, group: dict[str, Any]) -> updates.MuonPreset:
        """The group's Newton-Schulz and scaling settings over the preset's (torch's keys for ``torch``)."""
        base = updates.MUON_PRESETS[self.preset]
        return dataclasses.replace(
            base, coefficients=group["ns_coefficients"], ns_dtype=group.get("ns_dtype", base.ns_dtype),
            ns_eps=group.get("ns_eps", group.get("eps", base.ns_eps)),
            shape_scaling=group.get("shape_scaling", base.shape_scaling))

    def _muon_step(self, groups: list[dict[str, Any]]) -> None:
        work: list[tuple[dict[str, Any], Tensor, Tensor]] = []  # (group, p, Newton-Schulz input)
        for group in groups:
            for p in group["params"]:
                if p.grad is not None:
                    G = updates.muon_direction_(p.grad, self.state[p], momentum=group["momentum"],
                                                nesterov=group["nesterov"])
                    work.append((group, p, G))
        for (group, p, _), O in zip(work, self._orthogonalize(work)):
            updates.muon_apply_(p, O, lr=group["lr"], weight_decay=group["weight_decay"],
                                shape_scaling=self._preset(group).shape_scaling)

    def _orthogonalize(self, work: list[tuple[dict[str, Any], Tensor, Tensor]]) -> list[Tensor]:
        """Newton-Schulz of every work item; sharded round-robin over ranks when ``distributed``."""

        def ns(group: dict[str, Any], M: Tensor) -> Tensor:
            return updates.muon_orthogonalize(M, self._preset(group), group["ns_steps"])

        sharded = (self.distributed and dist.is_available() and dist.is_initialized()
                   and dist.get_world_size() > 1)
        if not sharded:
            return [ns(group, M) for group, _, M in work]
        rank, world = dist.get_rank(), dist.get_world_size()
        out: list[Tensor | None] = [None] * len(work)
        buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, (_, p, _) in enumerate(work):
            buckets.setdefault((p.dtype, p.device), []).append(i)
        for (dtype, device), idx in buckets.items():
            # one flat buffer per dtype/device: the owner writes its results, everyone else zeros,
            # so the all_reduce sum is exactly the owner's result on every rank
            flat = torch.zeros(sum(work[i][1].numel() for i in idx), dtype=dtype, device=device)
            views, offset = [], 0
            for i in idx:
                p = work[i][1]
                views.append(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            for i, view in zip(idx, views):
                if i % world == rank:
                    view.copy_(ns(work[i][0], work[i][2]))
            dist.all_reduce(flat)
            for i, view in zip(idx, views):
                out[i] = view
        return out  # type: ignore[return-value]


def _named(params: Any, prefix: str) -> list[tuple[str, Tensor]]:
    """(name, tensor) pairs from tensors or (name, tensor) pairs; unnamed ones get ``prefix + index``."""
    if isinstance(params, Tensor):
        params = [params]
    return [p if isinstance(p, tuple) else (f"{prefix}{i}", p) for i, p in enumerate(params)]


def _split(params: Iterable[Any], muon_params: str | list[str]) -> list[dict[str, Any]]:
    """Param groups ``[{"params": ..., "use_muon": True}, {"params": ..., "use_muon": False}]``."""
    items = list(params)
    if not items:
        raise ValueError("`params` is empty; pass `list(module.named_parameters())`.")
    if all(isinstance(x, dict) for x in items):
        for i, group in enumerate(items):
            if "use_muon" not in group:
                raise ValueError(
                    f"`params` group {i} has no 'use_muon' key; param-group dicts must each set use_muon=True "
                    "or False, or pass `named_parameters()` and choose Muon's parameters with `muon_params`."
                )
        return [dict(g) for g in items]
    if any(isinstance(x, dict) for x in items):
        raise ValueError("`params` mixes param-group dicts with parameters; pass one kind.")
    named = all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items)
    names = [x[0] for x in items] if named else [str(i) for i in range(len(items))]
    patterns = [muon_params] if isinstance(muon_params, str) else list(muon_params)
    if not patterns:
        raise ValueError("`muon_params`=[] selects nothing; give at least one pattern, e.g. 'W'.")
    chosen: set[int] = set()
    for pattern in patterns:
        hits = {i for i, n in enumerate(names)
                if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n.rsplit(".", 1)[-1], pattern)}
        if not hits:
            raise ValueError(
                f"`muon_params` pattern {pattern!r} matches no parameter; the parameters are {names} "
                "(patterns are fnmatch-style, matched against the full name and its last dotted component)."
            )
        chosen |= hits
    for i in sorted(chosen):
        p = items[i][1] if named else items[i]
        if p.ndim != 2:
            raise ValueError(
                f"`muon_params`={muon_params!r} selects {names[i]!r} with shape {tuple(p.shape)}, "
                f"but Muon updates only matrices (2-D parameters); narrow the pattern so that {names[i]!r} "
                "is left to Adam."
            )
    groups = [{"params": [items[i] for i in sorted(chosen)], "use_muon": True}]
    rest = [items[i] for i in range(len(items)) if i not in chosen]
    if rest:
        groups.append({"params": rest, "use_muon": False})
    return groups
