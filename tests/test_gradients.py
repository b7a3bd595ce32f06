"""G_F, η_eff, the ridge solution, G_F(∞) and the stage observables against brute force."""

import numpy as np
import pytest
import torch

from li2_lightning.analysis import gradients as gr
from li2_lightning.losses import loss_sum

ACTS = {"sqr": lambda z: z**2, "relu": lambda z: np.maximum(z, 0), "relusqr": lambda z: np.maximum(z, 0) ** 2,
        "silu": lambda z: z / (1 + np.exp(-z))}


def _data(M=7, n=30, K=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, M, (n, 2), generator=g)
    y = (x[:, 0] + x[:, 1]) % M
    W = torch.randn(2 * M, K, generator=g, dtype=torch.float64)
    V = torch.randn(K, M, generator=g, dtype=torch.float64)
    return M, x, y, W, V


def _onehot_X(x, M):
    X = np.zeros((len(x), 2 * M))
    X[np.arange(len(x)), x[:, 0].numpy()] = 1
    X[np.arange(len(x)), M + x[:, 1].numpy()] = 1
    return X


@pytest.mark.parametrize("act", sorted(ACTS))
def test_hidden_gather_equals_dense_onehot(act):
    M, x, y, W, V = _data()
    F = gr.hidden(W, x, act).numpy()
    ref = ACTS[act](_onehot_X(x, M) @ W.numpy())
    np.testing.assert_allclose(F, ref, rtol=1e-12, atol=1e-12)


def test_G_F_mse_constants_against_explicit_formula():
    """−∂L/∂F for L = (1/n)Σ‖(o_i − mean o_i) − (e_y − 1/M)‖², o = βFV: (2β/n)(Y − βFV)C Vᵀ."""
    M, x, y, W, V = _data()
    F = gr.hidden(W, x, "sqr")
    beta, n = 1.7, len(y)
    Fn, Vn = F.numpy(), V.numpy()
    Y = np.eye(M)[y.numpy()]
    C = np.eye(M) - np.ones((M, M)) / M
    ref = (2 * beta / n) * (Y - beta * Fn @ Vn) @ C @ Vn.T
    np.testing.assert_allclose(gr.G_F_autograd(F, V, y, "mse", beta).numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gr.G_F_closed_form(F, V, y, "mse", beta).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_G_F_mse_matches_the_training_loss_of_li2module():
    """Our "mse" is the module's loss (summed, divided by n): same −∂L/∂F."""
    M, x, y, W, V = _data()
    F = gr.hidden(W, x, "sqr").requires_grad_(True)
    loss = loss_sum("mse", F @ V, y) / len(y)
    (g,) = torch.autograd.grad(loss, F)
    torch.testing.assert_close(gr.G_F_closed_form(F.detach(), V, y, "mse"), -g)


def test_G_F_theory_is_eq2_and_ce_closed_form():
    M, x, y, W, V = _data(seed=1)
    F = gr.hidden(W, x, "relu")
    Fn, Vn, n = F.numpy(), V.numpy(), len(y)
    Y = np.eye(M)[y.numpy()]
    P = np.eye(n) - np.ones((n, n)) / n
    ref = P @ (Y - Fn @ Vn) @ Vn.T  # Eq. 2
    np.testing.assert_allclose(gr.G_F_theory(F, V, torch.tensor(Y)).numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gr.G_F_autograd(F, V, y, "theory").numpy(), ref, rtol=1e-10, atol=1e-12)
    O = 0.5 * Fn @ Vn
    Pr = np.exp(O - O.max(1, keepdims=True))
    Pr /= Pr.sum(1, keepdims=True)
    ce_ref = (0.5 / n) * (Y - Pr) @ Vn.T
    np.testing.assert_allclose(gr.G_F_autograd(F, V, y, "ce", 0.5).numpy(), ce_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gr.G_F_closed_form(F, V, y, "ce", 0.5).numpy(), ce_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_eta_eff_gives_the_fixed_point_of_mse_with_coupled_l2(beta):
    """At V*(η = n·wd/2) the full gradient ∂L/∂V + wd·V (Adam's coupled L2) vanishes."""
    M, x, y, W, _ = _data(n=40, K=9)
    F = gr.hidden(W, x, "sqr")
    wd = 0.03
    eta = gr.eta_eff(len(y), wd, "mse")
    assert eta == pytest.approx(len(y) * wd / 2)
    Vs = gr.V_fixed_point(F, y, M, eta, "mse", beta).requires_grad_(True)
    loss = gr.loss_value(F, Vs, y, "mse", beta)
    (g,) = torch.autograd.grad(loss, Vs)
    assert (g + wd * Vs).abs().max() < 1e-10
    # with the Gram shortcut the same
    torch.testing.assert_close(gr.V_fixed_point(F, y, M, eta, "mse", beta, gram=gr.gram_centred(F)), Vs.detach())


def test_eta_eff_other_losses_and_errors():
    assert gr.eta_eff(10, 0.1, "theory") == 0.1
    assert gr.eta_eff(10, 0.1, "ce") is None
    with pytest.raises(ValueError, match="weight_decay"):
        gr.eta_eff(10, -1.0)
    with pytest.raises(ValueError, match="loss"):
        gr.eta_eff(10, 0.1, "l1")
    with pytest.raises(ValueError, match="activation"):
        gr.hidden(torch.zeros(4, 2), torch.zeros(1, 2, dtype=torch.long), "tanh")


def test_V_ridge_minimises_the_theory_loss_with_ridge():
    M, x, y, W, _ = _data(n=40, K=9)
    F = gr.hidden(W, x, "sqr")
    Y = gr.one_hot(y, M)
    eta = 0.7
    V = gr.V_ridge(F, Y, eta).requires_grad_(True)
    J = gr.loss_value(F, V, y, "theory") + eta * V.square().sum() / 2
    (g,) = torch.autograd.grad(J, V)
    assert g.abs().max() < 1e-9


@pytest.mark.parametrize("eta", [0.3, 5.0])
def test_G_F_inf_equals_the_gradient_at_V_ridge(eta):
    """Eq. 4 against −∂J/∂F by autograd at V = V_ridge, J = ½‖P⊥(Y − FV)‖²."""
    M, x, y, W, _ = _data(n=25, K=40)
    F = gr.hidden(W, x, "sqr")
    Y = gr.one_hot(y, M)
    Vr = gr.V_ridge(F, Y, eta)
    ref = gr.G_F_autograd(F, Vr, y, "theory")
    torch.testing.assert_close(gr.G_F_inf(F, Y, eta), ref, rtol=1e-7, atol=1e-10)


def test_G_F_inf_vanishes_with_eta():
    M, x, y, W, _ = _data(n=25, K=40)
    F = gr.hidden(W, x, "sqr")
    Y = gr.one_hot(y, M)
    norms = [float(gr.G_F_inf(F, Y, eta).norm()) for eta in (1.0, 1e-2, 1e-4)]
    assert norms[0] > norms[1] > norms[2] and norms[2] < 1e-2 * norms[0]
    assert float(gr.G_F_inf(F, Y, 0.0).abs().max()) == 0.0


def test_alignment_against_explicit_matrices():
    M, x, y, W, V = _data(n=50)
    F = gr.hidden(W, x, "sqr")
    G = gr.G_F_closed_form(F, V, y, "mse")
    n = len(y)
    P = np.eye(n) - np.ones((n, n)) / n
    Y = np.eye(M)[y.numpy()]
    S = P @ Y @ Y.T @ P @ F.numpy()
    ref = (G.numpy() * S).sum() / (np.linalg.norm(G.numpy()) * np.linalg.norm(S))
    assert gr.alignment(G, F, y, M) == pytest.approx(ref, rel=1e-9)
    np.testing.assert_allclose(gr.label_signal(F, y, M).numpy(), S, rtol=1e-9, atol=1e-10)
    assert gr.alignment(gr.label_signal(F, y, M), F, y, M) == pytest.approx(1.0)


def test_independence_ratio_and_gram_distance_brute_force():
    M, x, y, W, V = _data(n=60, K=10)
    F = gr.hidden(W, x, "sqr")
    Fc = F.numpy() - F.numpy().mean(0)
    G = Fc.T @ Fc
    off = np.abs(G[~np.eye(10, dtype=bool)]).mean()
    assert gr.independence_ratio(F) == pytest.approx(off / np.abs(np.diag(G)).mean(), rel=1e-10)
    sub = torch.tensor([1, 4, 7])
    Gs = G[np.ix_([1, 4, 7], [1, 4, 7])]
    assert gr.independence_ratio(F, sub) == pytest.approx(
        np.abs(Gs[~np.eye(3, dtype=bool)]).mean() / np.abs(np.diag(Gs)).mean(), rel=1e-10)
    # FFᵀ distance: least squares over (a, b) by numpy
    H = F.numpy() @ F.numpy().T
    n = H.shape[0]
    A = np.stack([np.eye(n).ravel(), np.ones(n * n)], 1)
    coef, *_ = np.linalg.lstsq(A, H.ravel(), rcond=None)
    ref = np.linalg.norm(H.ravel() - A @ coef) / np.linalg.norm(H)
    assert gr.gram_isotropy_distance(F) == pytest.approx(ref, rel=1e-8)
    # an exact aI + b11ᵀ Gram matrix has distance 0
    Fx = torch.cat([2.0 * torch.eye(8, dtype=torch.float64), 3.0 * torch.ones(8, 1, dtype=torch.float64)], 1)
    assert gr.gram_isotropy_distance(Fx) < 1e-12


def test_theorem6_sign_identity_by_explicit_P_eta():
    """f̃_jᵀ P_{η,−jl} f̃_l computed with the columns removed has sign −sign(b_jl)."""
    g = torch.Generator().manual_seed(3)
    F = torch.randn(20, 8, generator=g, dtype=torch.float64)
    F[:, 1] = F[:, 0] + 0.3 * F[:, 1]  # a similar pair
    eta = 0.5
    Fc = (F - F.mean(0)).numpy()
    B = np.linalg.inv(Fc.T @ Fc + eta * np.eye(8))
    for j, l in [(0, 1), (2, 5), (3, 7)]:
        keep = [i for i in range(8) if i not in (j, l)]
        P = eta * np.linalg.inv(Fc[:, keep] @ Fc[:, keep].T + eta * np.eye(20))
        v = Fc[:, j] @ P @ Fc[:, l]
        assert np.sign(B[j, l]) == -np.sign(v)
        assert v == pytest.approx(-B[j, l] / (B[j, j] * B[l, l] - B[j, l] ** 2), rel=1e-8)
    r = gr.repulsion(F, eta, n_pairs=5)
    assert r["sign_match"] == 1.0
    cos = np.corrcoef(Fc.T)
    iu = np.triu_indices(8, 1)
    top = np.argsort(-cos[iu])[:5]
    ref = np.mean([np.sign(B[iu[0][t], iu[1][t]]) == -np.sign(cos[iu][t]) for t in top])
    assert r["repulsion"] == pytest.approx(ref)
    assert r["mean_cos"] == pytest.approx(cos[iu][top].mean())


def test_uncovered_share_sees_the_block_of_the_class_profile():
    from li2_lightning.analysis.irreps import fourier_blocks

    M = 11
    a, b = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    x = torch.tensor(np.stack([a.ravel(), b.ravel()], 1))
    y = (x[:, 0] + x[:, 1]) % M
    basis = fourier_blocks(M)
    k = 3
    prof = torch.cos(2 * np.pi * k * y.double() / M)  # class profile in block k only
    G = prof[:, None] * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    covered = torch.zeros(basis.n_blocks, dtype=torch.bool)
    assert gr.uncovered_share(G, y, basis.Q, basis.block_index, covered) == pytest.approx(1.0)
    covered[k] = True
    assert gr.uncovered_share(G, y, basis.Q, basis.block_index, covered) == pytest.approx(0.0, abs=1e-12)
    covered[:] = False
    covered[1] = True
    G2 = G + torch.cos(2 * np.pi * 1 * y.double() / M)[:, None]  # equal power in blocks 1 and 3
    assert gr.uncovered_share(G2, y, basis.Q, basis.block_index, covered) == pytest.approx(
        float((G**2).sum() / ((G**2).sum() + 3 * (M * M / 2))), rel=1e-9)


def test_V_fixed_point_shortcuts_agree():
    """Gram shortcut and Sherman-Morrison on the shared Cholesky factor give the direct solution."""
    M, x, y, W, _ = _data(n=40, K=9)
    F = gr.hidden(W, x, "sqr")
    eta = 0.3
    direct = gr.V_fixed_point(F, y, M, eta, "mse")
    G = gr.gram_centred(F)
    torch.testing.assert_close(gr.V_fixed_point(F, y, M, eta, "mse", gram=G), direct)
    chol = gr.ridge_cholesky(G, eta)
    torch.testing.assert_close(gr.V_fixed_point(F, y, M, eta, "mse", gram=G, chol=chol), direct)
