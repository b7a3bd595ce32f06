"""Model variants (docs/theory.md §10): deeper nets, residual layers, complex weights, a ridge top layer.

Every reference below is written here from the definitions: dense one-hot matmuls, finite
differences, and the normal equations of the ridge problem solved directly.
"""

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch

from li2_lightning.analysis.layers import ridge_readout
from li2_lightning.data import GroupArithmeticDataModule
from li2_lightning.functional import model as fm
from li2_lightning.module import Li2Module
from li2_lightning.nets import TwoLayerNet

warnings.filterwarnings("ignore")
SIGMA = {"sqr": lambda z: z * z, "relu": lambda z: z.clamp(min=0), "relusqr": lambda z: z.clamp(min=0) ** 2,
         "silu": lambda z: z / (1 + torch.exp(-z))}


def _X(x, M, dtype=torch.float64):
    X = torch.zeros(len(x), 2 * M, dtype=dtype)
    X[torch.arange(len(x)), x[:, 0]] = 1
    X[torch.arange(len(x)), M + x[:, 1]] = 1
    return X


def _dense(W, Us, V, x, M, activation, residual, beta=1.0):
    """Ŷ by dense one-hot matmuls, layer by layer (column-vector form x ← σ(x + U x) as rows)."""
    F = SIGMA[activation](_X(x, M, W.dtype) @ W)
    for U in Us:
        Z = F @ U
        F = SIGMA[activation](F + Z if residual else Z)
    out = beta * (F @ V)
    return out.real if out.is_complex() else out


def test_one_hidden_layer_is_todays_net():
    M, K = 9, 12
    torch.manual_seed(4)
    W_ref = torch.empty(2 * M, K).uniform_(-1 / math.sqrt(2 * M), 1 / math.sqrt(2 * M))
    V_ref = torch.empty(K, M).uniform_(-1 / math.sqrt(K), 1 / math.sqrt(K))
    torch.manual_seed(4)
    net = TwoLayerNet(M, K, "relu", hidden_layers=1)
    assert torch.equal(net.W, W_ref) and torch.equal(net.V, V_ref) and len(net.U) == 0
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    torch.testing.assert_close(net(x), torch.relu(_X(x, M, torch.float32) @ W_ref) @ V_ref)
    # a deeper net draws the same W and V first, then its layers
    torch.manual_seed(4)
    deep = TwoLayerNet(M, K, "relu", hidden_layers=3)
    assert torch.equal(deep.W, W_ref) and torch.equal(deep.V, V_ref) and len(deep.U) == 2
    bound = 1 / math.sqrt(K)
    assert all(U.shape == (K, K) and U.abs().max() <= bound for U in deep.U)


@pytest.mark.parametrize("activation, residual, complex_weights", [
    ("sqr", False, False), ("relu", True, False), ("silu", False, False), ("relusqr", True, False),
    ("sqr", False, True), ("sqr", True, True)])
def test_deep_forward_and_gradients(activation, residual, complex_weights):
    M, K, L = 5, 6, 3
    torch.manual_seed(0)
    net = TwoLayerNet(M, K, activation, output_scale=1.3, hidden_layers=L, residual=residual,
                      complex_weights=complex_weights)
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    ps = [p.detach() for p in net.layer_weights()]
    assert all(p.is_complex() == complex_weights for p in ps)
    torch.testing.assert_close(net(x), _dense(ps[0], ps[1:-1], ps[-1], x, M, activation, residual, 1.3))
    params = [p.to(torch.complex128 if p.is_complex() else torch.float64) for p in ps]
    y = (x[:, 0] + x[:, 1]) % M

    def loss(*ps):
        out = fm.forward(ps[0], ps[-1], x, activation, 1.3, U=list(ps[1:-1]), residual=residual)
        return fm.loss_rows("mse", out, y).mean()

    inputs = [p.clone().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(loss(*inputs), inputs)
    # central finite differences on a few entries of every layer (real and imaginary parts)
    g = torch.Generator().manual_seed(1)
    h = 1e-6
    for i, p in enumerate(params):
        for _ in range(4):
            j = int(torch.randint(p.numel(), (1,), generator=g))
            for unit in ([1.0, 1j] if p.is_complex() else [1.0]):
                plus, minus = [q.clone() for q in params], [q.clone() for q in params]
                plus[i].view(-1)[j] += h * unit
                minus[i].view(-1)[j] -= h * unit
                fd = (loss(*plus) - loss(*minus)) / (2 * h)
                an = grads[i].reshape(-1)[j]
                an = an.real if unit == 1.0 else an.imag  # torch: ∂L/∂Re + i ∂L/∂Im
                assert abs(float(fd) - float(an)) < 1e-6 * max(1.0, abs(float(fd))), (i, j, unit, fd, an)


def test_complex_weights_refuse_non_holomorphic_activation():
    with pytest.raises(ValueError, match="complex_weights"):
        TwoLayerNet(5, 4, "relu", complex_weights=True)
    with pytest.raises(ValueError, match="hidden_layers"):
        Li2Module(K=4, M=5, hidden_layers=0)
    with pytest.raises(ValueError, match="top_layer"):
        Li2Module(K=4, M=5, top_layer="frozen")
    with pytest.raises(ValueError, match="loss"):
        Li2Module(K=4, M=5, top_layer="ridge", loss="ce")


def test_real_point_of_a_complex_net_gets_no_imaginary_gradient():
    """Why the imaginary parts are drawn (docs/theory.md §10): cast to complex, a real net stays real."""
    M, K = 7, 8
    torch.manual_seed(0)
    net = TwoLayerNet(M, K, hidden_layers=2).double()
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))
    y = (x[:, 0] + x[:, 1]) % M
    ps = [p.detach().to(torch.complex128).requires_grad_(True) for p in net.layer_weights()]
    out = fm.forward(ps[0], ps[-1], x, "sqr", U=ps[1:-1])
    grads = torch.autograd.grad(fm.loss_rows("mse", out, y).mean(), ps)
    assert all(float(g.imag.abs().max()) < 1e-12 for g in grads)
    assert all(float(g.real.abs().max()) > 1e-6 for g in grads)


@pytest.mark.parametrize("complex_weights", [False, True])
def test_ridge_top_layer_is_the_closed_form(complex_weights):
    M, K, eta, beta = 7, 10, 0.3, 1.5
    torch.manual_seed(2)
    net = TwoLayerNet(M, K, hidden_layers=2, complex_weights=complex_weights, top_layer="ridge",
                      ridge_lambda=eta, output_scale=beta)
    for p in net.parameters():
        p.data = p.data.to(torch.complex128 if p.is_complex() else torch.float64)
    assert not net.V.requires_grad
    x = torch.cartesian_prod(torch.arange(M), torch.arange(M))[::2]
    y = (x[:, 0] + x[:, 1]) % M
    net.fit_top_layer_(x, y)
    F = net.hidden(x).detach()
    T = torch.nn.functional.one_hot(y, M).double() - 1.0 / M  # targets Y − 1/M
    if complex_weights:
        A = torch.cat([F.real, -F.imag], 1)  # Re(F V) = [Re F, −Im F] [Re V; Im V]
    else:
        A = F
    Vs = torch.linalg.solve(beta**2 * A.T @ A + eta * torch.eye(A.shape[1], dtype=A.dtype), beta * A.T @ T)
    ref = torch.complex(Vs[:K], Vs[K:]) if complex_weights else Vs
    torch.testing.assert_close(net.V.detach(), ref)
    # and it minimises the class-centred MSE (a sum over rows here) plus η‖V‖²: zero gradient in V
    V = net.V.detach().clone().requires_grad_(True)
    obj = fm.loss_rows("mse", fm.readout(F, V, beta), y).sum() / 2 * 2 + eta * (V.abs() ** 2).sum()
    (gV,) = torch.autograd.grad(obj, V)
    assert float(gV.abs().max()) < 1e-8
    # the helper equals the same solve
    torch.testing.assert_close(ridge_readout(F, y, M, eta, beta), ref)


def test_li2module_ridge_trains_only_W_and_sets_V_each_step():
    pl.seed_everything(0, verbose=False)
    dm = GroupArithmeticDataModule("Z7", train_fraction=0.6, split_seed=0)
    model = Li2Module(K=8, M=7, top_layer="ridge", ridge_lambda=0.1, hidden_layers=2,
                      optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    W0 = model.net.W.detach().clone()
    pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu").fit(model, dm)
    assert not torch.equal(W0, model.net.W)
    assert model.hparams.top_layer == "ridge" and model.hparams.hidden_layers == 2
    assert model.net.V.grad is None  # never trained: set by fit_top_layer_ before each step
