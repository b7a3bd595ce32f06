"""LayerMonitor and analysis.layers against direct computations written here."""

import warnings

import lightning.pytorch as pl
import pytest
import torch

from li2_lightning.analysis.irreps import fourier_blocks
from li2_lightning.analysis.layers import (layer_gradients, onset_epoch, profile_coverage, profile_power,
                                           profile_purity)
from li2_lightning.callbacks import LayerMonitor
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.module import Li2Module

warnings.filterwarnings("ignore")


def _direct_alignment(G, F, y, M):
    """cos(G, ỸỸᵀF̃) with Ỹ, F̃ built as dense centred matrices."""
    if G.is_complex():
        G, F = torch.cat([G.real, G.imag], 1), torch.cat([F.real, F.imag], 1)
    G, F = G.double(), F.double()
    Y = torch.nn.functional.one_hot(y, M).double()
    Yc, Fc = Y - Y.mean(0), F - F.mean(0)
    P = Yc @ Yc.T @ Fc
    return float((G * P).sum() / (G.norm() * P.norm()))


def _direct_profile_purity(F, y, M):
    """Per node: class means' centred DFT power, dominant frequency pair share (Z_M, real F)."""
    F = F.double()
    prof = torch.zeros(M, F.shape[1], dtype=torch.float64).index_add_(0, y, F - F.mean(0))  # (M, K)
    P = torch.fft.fft(prof, dim=0).abs() ** 2  # (M, K)
    pair = torch.stack([P[k] + (P[M - k] if M - k != k else 0) for k in range(1, M // 2 + 1)])  # (freqs, K)
    total = pair.sum(0)
    return torch.where(total > 1e-20, pair.max(0).values / total, torch.zeros_like(total))  # dead node: 0


def test_profile_purity_equals_fourier_brute_force():
    M, K = 11, 7
    torch.manual_seed(0)
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    y = (x[:, 0] + x[:, 1]) % M
    F = torch.randn(len(y), K, dtype=torch.float64)
    F[:, 0] = torch.cos(2 * torch.pi * 3 * y / M) + 0.5  # a pure node: frequency 3
    power = profile_power(F, y, fourier_blocks(M))
    pur = profile_purity(power)
    torch.testing.assert_close(pur, _direct_profile_purity(F, y, M))
    assert abs(float(pur[0]) - 1.0) < 1e-9
    assert profile_coverage(power, 0.99) == pytest.approx(1 / ((M - 1) // 2))
    assert onset_epoch([0, 10, 20, 30], [0.2, 0.25, 0.31, 0.5], 0.1) == 20
    assert onset_epoch([0, 10], [0.2, 0.25], 0.1) is None


def test_layer_gradients_equal_autograd_on_a_dense_net():
    M, K = 7, 6
    torch.manual_seed(1)
    W, V = torch.randn(2 * M, K, dtype=torch.float64), torch.randn(K, M, dtype=torch.float64)
    U = [torch.randn(K, K, dtype=torch.float64) * 0.3]
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    y = (x[:, 0] * 2 + x[:, 1]) % M
    Fs, Gs = layer_gradients(W, U, V, x, y, "relu", residual=True)
    X = torch.zeros(len(x), 2 * M, dtype=torch.float64)
    X[torch.arange(len(x)), x[:, 0]] = 1
    X[torch.arange(len(x)), M + x[:, 1]] = 1
    F1 = torch.relu(X @ W).requires_grad_(True)
    F2 = torch.relu(F1 + F1 @ U[0])
    out = F2 @ V
    R = (out - out.mean(1, keepdim=True)) - (torch.nn.functional.one_hot(y, M) - 1.0 / M)
    loss = (R ** 2).sum(1).mean()
    g1, g2 = torch.autograd.grad(loss, [F1, F2])
    torch.testing.assert_close(Fs[1], F2.detach())
    torch.testing.assert_close(Gs[0], -g1)
    torch.testing.assert_close(Gs[1], -g2)


@pytest.mark.parametrize("variant", [dict(hidden_layers=3, activation="relu"), dict(complex_weights=True)])
def test_layer_monitor_logs_direct_values(variant):
    pl.seed_everything(0, verbose=False)
    dm = GroupArithmeticDataModule("Z11", train_fraction=0.6, split_seed=0)
    model = Li2Module(K=16, M=11, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), **variant)
    W0 = [w.detach().clone() for w in model.net.layer_weights()]
    mon = LayerMonitor(every_n_epochs=2, onset_gain=0.01)
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", callbacks=[mon])
    trainer.fit(model, dm)
    L = variant.get("hidden_layers", 1)
    last = mon.history[-1]
    assert last["epoch"] == 3 and [h["epoch"] for h in mon.history] == [0, 2, 3]
    # recompute the final epoch's values directly from the trained weights
    x, y = dm.train_x, dm.train_y
    ws = [w.detach() for w in model.net.layer_weights()]
    with torch.enable_grad():
        p = [w.clone().requires_grad_(False) for w in ws]
        X = torch.zeros(len(x), 22, dtype=ws[0].dtype)
        X[torch.arange(len(x)), x[:, 0]] = 1
        X[torch.arange(len(x)), 11 + x[:, 1]] = 1
        sig = (lambda z: z * z) if variant.get("activation", "sqr") == "sqr" else torch.relu
        Fl = [sig(X @ p[0]).requires_grad_(True)]
        for U in p[1:-1]:
            Fl.append(sig(Fl[-1] @ U))
            Fl[-1].retain_grad()
        out = Fl[-1] @ p[-1]
        out = out.real if out.is_complex() else out
        R = (out - out.mean(1, keepdim=True)) - (torch.nn.functional.one_hot(y, 11) - 1.0 / 11)
        (R ** 2).sum(1).mean().backward()
    for l in range(L):
        G = -Fl[l].grad
        assert last[f"li2/layer{l + 1}/align"] == pytest.approx(_direct_alignment(G, Fl[l].detach(), y, 11), abs=1e-4)
        assert last[f"li2/layer{l + 1}/G_norm"] == pytest.approx(float(G.abs().pow(2).sum().sqrt()), rel=1e-4)
        move = float((ws[l] - W0[l]).abs().pow(2).sum().sqrt() / W0[l].abs().pow(2).sum().sqrt())
        assert last[f"li2/layer{l + 1}/move"] == pytest.approx(move, rel=1e-5)
        if not ws[0].is_complex():
            ref = float(_direct_profile_purity(Fl[l].detach(), y, 11).mean())
            assert last[f"li2/layer{l + 1}/purity"] == pytest.approx(ref, rel=1e-5)
        assert last[f"stage/layer{l + 1}_onset"] in [-1.0] + [h["epoch"] for h in mon.history]
    assert "li2/layer1/W_coverage" in last and f"li2/layer{L + 1}/align" not in last
    assert mon.state_dict()["onsets"] == mon.onsets
