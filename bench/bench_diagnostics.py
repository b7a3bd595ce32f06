"""Cost of the Li2 diagnostics as a ratio to the plain training epoch, on the Fig. 3 setting.

Li2Module (Z71, K 2048, n 2016, x², MSE, Adam lr 1e-3 wd 2e-4, full batch, validation on the test
set every epoch) is trained under the Lightning Trainer with a CSVLogger in three variants:

- ``plain``: no Li2 callbacks;
- ``every1``: the four callbacks as ``callbacks/li2.yaml`` sets them (the monitored scalars every
  epoch, the detail scalars every 10, heavy observables every 100 epochs, images every 50);
- ``every10``: as ``callbacks/li2_every10.yaml`` (scalars every 10, heavy every 500, images every
  100).

The machine is shared, and its load changes from minute to minute, so the variants are run as
short fits (``--epochs``, default 22; epochs 1..20 timed) interleaved in ``--rounds`` rounds, and
each variant's ratio is the median over rounds of its time over the plain fit of the same round.
These fits run the scalar observables at the bundle's cadence; the heavy observables and images,
whose cadences are longer than a fit, are timed apart on one snapshot and added as their cost per
epoch at the bundle's cadence (``+ amortised``). A second estimate, within the same epochs, times
the callbacks' own hooks: 1 + (time in the hooks) / (rest of the epoch time). The energy
reference (once per fit, in ``on_train_start``) is outside the epochs and printed apart.

    python bench/bench_diagnostics.py                  # Fig. 3 setting
    python bench/bench_diagnostics.py --group Z23 --K 256 --n_train 264 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module


class _EpochClock(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.train_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = {"every1": "li2.yaml", "every10": "li2_every10.yaml"}


def bundle(name: str, scalars_only: bool = False) -> list[pl.Callback]:
    """The callbacks of the YAML bundle ``callbacks/<name>``, instantiated.

    With ``scalars_only`` the heavy observables and images are switched off (cadence 0).
    """
    import importlib

    import yaml

    entries = yaml.safe_load(open(os.path.join(ROOT, "callbacks", name)))["trainer"]["callbacks+"]
    out = []
    for e in entries:
        module, cls = e["class_path"].rsplit(".", 1)
        cb = getattr(importlib.import_module(module), cls)(**dict(e.get("init_args") or {}))
        if scalars_only:  # also where the bundle leaves these cadences at their defaults
            for k in ("heavy_every_n_epochs", "image_every_n_epochs"):
                if hasattr(cb, k):
                    setattr(cb, k, 0)
        out.append(cb)
    return out


def cadences(name: str) -> tuple[int, int]:
    """(heavy_every_n_epochs, image_every_n_epochs) of a bundle."""
    cbs = bundle(name)
    heavy = next(cb.heavy_every_n_epochs for cb in cbs if hasattr(cb, "heavy_every_n_epochs"))
    image = next(cb.image_every_n_epochs for cb in cbs if hasattr(cb, "image_every_n_epochs"))
    return heavy, image


def _timed_hooks(cb: pl.Callback, spent: list[float], epoch_of) -> None:
    """Wrap the callback's epoch hooks so their time (epochs >= 1) adds up in ``spent``."""
    for name in ("on_train_epoch_start", "on_train_epoch_end"):
        hook = getattr(cb, name)

        def timed(trainer, pl_module, _hook=hook):
            t = time.perf_counter()
            _hook(trainer, pl_module)
            if epoch_of(trainer) >= 1:
                spent[0] += time.perf_counter() - t

        setattr(cb, name, timed)


def run(dm, K: int, epochs: int, bundle_name: str | None, root: str) -> tuple[float, float, float]:
    """Mean epoch time over epochs 1..epochs-2, the callbacks' one-off set-up time, and the
    hook-timed overhead ratio 1 + hooks / (epochs − hooks) over the same epochs."""
    torch.manual_seed(0)
    clock = _EpochClock()
    cbs = [] if bundle_name is None else bundle(bundle_name, scalars_only=True)
    spent = [0.0]
    for cb in cbs:
        _timed_hooks(cb, spent, lambda tr: tr.current_epoch if tr.current_epoch < epochs - 1 else -1)
    # the clock runs first at epoch start and its on_train_start runs before the callbacks' set-up
    trainer = pl.Trainer(max_epochs=epochs, logger=CSVLogger(root), enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[clock] + cbs, accelerator="cpu", devices=1)
    trainer.fit(Li2Module(K=K), dm)
    setup = clock.starts[0] - clock.train_start
    diffs = [b - a for a, b in zip(clock.starts[1:-2], clock.starts[2:-1])]  # epochs 1..E-2
    total = sum(diffs)
    return total / len(diffs), setup, 1 + spent[0] / (total - spent[0])


def part_costs(dm, K: int) -> dict[str, float]:  # noqa: C901
    """Milliseconds of each part of the diagnostics on one captured snapshot."""
    from li2_lightning.analysis import gradients as gr
    from li2_lightning.callbacks import _plots
    from li2_lightning.callbacks.snapshot import Snapshot
    from li2_lightning.nets import TwoLayerNet
    from li2_lightning.probe import Li2Probe

    torch.manual_seed(0)
    net = TwoLayerNet(dm.M, K)
    x, y = dm.train_x, dm.train_y
    F = net.hidden(x).detach()
    G = gr.G_F_closed_form(F, net.V.detach(), y)
    W, V = net.W.detach(), net.V.detach()

    def snap():
        probe = Li2Probe(M=dm.M, x=x, y=y, W=W, V=V, activation="sqr", group=dm.group,
                         eta_eff=len(y) * 2e-4 / 2)
        return Snapshot(probe, W.clone(), V.clone(), F, -G)

    gf, en, ft, st = bundle("li2.yaml")
    gf._W0, gf._V0, en.E_ref, en.E_block = W.clone(), V.clone(), 1.0, [1.0] * dm.M

    class _T:  # the trainer attributes the monitors read; epoch 1: no detail keys
        callback_metrics = {"train/acc": torch.tensor(1.0), "val/acc": torch.tensor(0.0)}
        current_epoch, check_val_every_n_epoch, max_epochs, sanity_checking, optimizers = 1, 1, 100, False, []

    class _T0(_T):  # epoch 0: every key
        current_epoch = 0

    def cheap(tr=_T):
        s = snap()
        detail = tr is _T0
        gf.observables(s, False, detail), en.compute(s, tr), ft.compute(s, tr), st._observe(tr, s)

    def timed(f, reps):
        f()
        t = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - t) / reps * 1e3

    return {"cheap observables, every-epoch keys (all four)": timed(cheap, 5),
            "cheap observables, every key (detail epochs)": timed(lambda: cheap(_T0), 5),
            "heavy observables (r_V, G_F(inf), FF^T, repulsion)": timed(lambda: gf._heavy(snap()), 1),
            "heatmap image": timed(lambda: _plots.irrep_heatmap(snap().power, snap().basis.labels, 0, None), 2),
            "energy histogram image": timed(lambda: _plots.energy_histogram(snap().energy, 0, None), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", default="Z71")
    parser.add_argument("--K", type=int, default=2048)
    parser.add_argument("--n_train", type=int, default=2016)
    parser.add_argument("--epochs", type=int, default=22)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dm = GroupArithmeticDataModule(args.group, n_train=args.n_train)
    variants = {"plain": None, **BUNDLES}
    times: dict[str, list[float]] = {v: [] for v in variants}
    hooked: dict[str, list[float]] = {v: [] for v in variants}
    setups: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            for name, every in variants.items():
                t, setup, ratio = run(dm, args.K, args.epochs, every, root)
                times[name].append(t)
                hooked[name].append(ratio)
                if every is not None:
                    setups.append(setup)
                print(f"round {r}: {name:8s} {t * 1e3:7.1f} ms/epoch   hook-timed ratio {ratio:.3f}", flush=True)
    plain = statistics.median(times["plain"]) * 1e3
    parts = part_costs(dm, args.K)
    cheap, _, heavy, heat, hist = parts.values()
    print(f"\n{args.group}, K {args.K}, n {args.n_train}: plain epoch {plain:.1f} ms (median of {args.rounds} "
          f"fits); one-off callback set-up (energy reference) {statistics.median(setups):.2f} s per fit")
    print("cost of the parts on one snapshot (ms):")
    for k, v in parts.items():
        print(f"  {k:52s} {v:8.1f}")
    print("\nratio to the plain epoch   scalars (interleaved)  + amortised heavy/images  = total"
          "   | hook-timed + amortised   | estimate from the parts")
    for name, path in BUNDLES.items():
        heavy_every, image_every = cadences(path)
        every = bundle(path)[0].every_n_epochs
        amort = ((heavy / heavy_every if heavy_every else 0) + ((heat + hist) / image_every if image_every else 0)) / plain
        paired = statistics.median(t / p for t, p in zip(times[name], times["plain"]))
        hook = statistics.median(hooked[name])
        est = 1 + (cheap / every) / plain + amort
        print(f"  {name:8s} ({path:17s})   {paired:6.3f}                + {amort:.3f}                  "
              f"= {paired + amort:.3f}   | {hook + amort:.3f}                    | {est:.3f}")

if __name__ == "__main__":
    main()
