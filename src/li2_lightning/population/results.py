"""A population's results: per-member histories, results rows and the analysis of their weights."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from li2_lightning.analysis import features
from li2_lightning.analysis.energy import normalized_energy

THRESHOLDS = (("train_acc", 1.0), ("test_acc", 0.5), ("test_acc", 0.99))
_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


class PopulationResults:
    """Results of :class:`~li2_lightning.population.PopulationModule` (a mixin: it reads the
    module's history, members and weights)."""

    def history(self) -> torch.Tensor:
        """(T+1, S, 4) metrics at θ_0..θ_T (columns train loss, train acc, test loss, test acc), CPU."""
        rows = [] if self._hist is None else [self._hist[: self._steps]]
        if self._final is not None:
            rows.append(self._final[None])
        if not rows:
            return torch.empty(0, self.S, 4)
        return torch.cat(rows).float().cpu()

    def lightning_metrics(self) -> dict[str, torch.Tensor]:
        """Per-epoch curves with ``Li2Module``'s timing, each (epochs, S): train/* at θ_e, val/* at θ_{e+1}."""
        h = self.history()
        E = h.shape[0] - 1
        return {"train/loss": h[:E, :, 0], "train/acc": h[:E, :, 1],
                "val/loss": h[1:, :, 2], "val/acc": h[1:, :, 3]}

    def results(self) -> list[dict]:
        """One dict per member: its settings, steps to train acc 1 and test acc 0.5 / 0.99 (None
        if never), final accuracies and losses, and energy / coverage when ``analyze``.

        With :meth:`configure_members`, one row per member that has finished, in arrival order,
        each describing the member up to its stop: ``epochs`` and ``stop_epoch`` are the steps it
        took, ``final_*`` its metrics at the stop, ``epochs_to_*`` None when not reached before
        the stop (a stopped member's full-budget values are unknown, never filled in);
        ``stop_reason`` is ``done`` or ``stalled`` (the policy), ``budget`` (its own max_epochs) or
        ``truncated`` (the Trainer ended first); ``stage_<stage>_epoch`` the first epoch of each
        stage (None if never), ``stage_final`` and ``curves`` as ``lightning_metrics``.
        """
        if self._dynamic:
            return [r["row"] for r in sorted(self._records, key=lambda r: r["serial"])]
        h = self.history()
        T = h.shape[0] - 1
        extra = self._analysis() if self.hparams.analyze and T >= 0 else [{}] * self.S
        return [self._row(s, h[:, s], extra[s]) for s in range(self.S)]

    def _row(self, s: int, h: torch.Tensor, extra: dict) -> dict:
        """The results row of the member in slot s with metrics h (T+1, 4) at θ_0..θ_T."""
        T = h.shape[0] - 1
        hp = self.hparams
        m = self.members[s]
        row = {"group": self.grp.name, "M": self.M, "K": self.K, "seed": m.seed,
               "split_seed": self.split_seeds[s], "n_train": self.n_trains[s],
               "train_fraction": self.n_trains[s] / self.M**2, "lr": m.lr,
               "weight_decay": m.weight_decay, "V_init_scale": m.V_init_scale,
               "optimizer": self.spec.name, "activation": hp.activation, "loss": hp.loss,
               "hidden_layers": hp.hidden_layers, "residual": hp.residual,
               "complex_weights": hp.complex_weights, "top_layer": hp.top_layer,
               **({"ridge_lambda": hp.ridge_lambda} if hp.top_layer == "ridge" else {}),
               "epochs": T, "stopped_early": self._stopped_early}
        if self.spec.name == "muon":
            row["muon_lr"] = m.lr if m.muon_lr is None else m.muon_lr
            row["preset"] = self.spec.preset
        for metric, thr in THRESHOLDS:
            col = _METRICS.index(metric)
            hit = (h[:, col] >= thr - 1e-6).nonzero()
            row[f"epochs_to_{metric}_{thr:g}"] = int(hit[0, 0]) if len(hit) else None
        for col, metric in enumerate(_METRICS):
            v = float(h[-1, col]) if T >= 0 else float("nan")
            row[f"final_{metric}"] = None if math.isnan(v) else v
            row[f"best_{metric}"] = (None if T < 0 or "loss" in metric or math.isnan(v)
                                     else float(h[:, col].nan_to_num(nan=-1.0).max()))
        row.pop("best_train_loss"), row.pop("best_test_loss")
        row.update(extra)
        return row

    @torch.no_grad()
    def _analysis(self, slots: Optional[Sequence[int]] = None) -> list[dict]:
        """Per-member mean normalized energy (train rows) and irrep coverage of the first layer W;
        {} where unavailable. With complex weights the coverage is that of [Re W, Im W] (2K nodes)
        and the energy, defined for a real σ(Xw), is left out (docs/theory.md §10)."""
        basis = self._basis()
        rows = []
        for s in (range(self.S) if slots is None else slots):
            W = self.W[s].detach().cpu()
            if W.is_complex():
                rows.append(coverage(torch.cat([W.real, W.imag], dim=1), basis))
                continue
            n = int(self.tr_n[s])
            x = self.tr_x[s, :n].cpu()
            y = self.tr_y[s, :n].cpu()
            E = normalized_energy(W, x, y, self.hparams.activation)
            rows.append({"energy_mean": float(E.mean()), **coverage(W, basis)})
        return rows



def coverage(W: torch.Tensor, basis, purity_threshold: float = 0.9) -> dict:
    """Mean feature purity and irrep coverage of a first layer W (2M, K) (docs/theory.md §6, item 5).

    Thin wrapper over :mod:`li2_lightning.analysis.features` (float64 there).

    Returns:
        ``{"purity_mean": float, "coverage": float}``.
    """
    power = features.irrep_power(W, basis)  # (K, 2, B)
    return {"purity_mean": float(features.purity(power).mean()),
            "coverage": features.coverage(power, purity_threshold)}

