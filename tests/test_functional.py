"""The functional layer against independent references: autograd, direct formulas, torch's optimizers."""

import pytest
import torch
from torch.nn import functional as nnf

from li2_lightning.functional import (ACTIVATIONS, adam_, forward, loss_rows, loss_sum, member_rows, muon_,
                                      preactivation, sgd_, sigma, sigma_prime)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_and_degree(name):
    z = torch.linspace(-3, 3, 601, dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(sigma(z, name).sum(), z)
    torch.testing.assert_close(sigma_prime(z.detach(), name), grad, rtol=1e-12, atol=1e-12)
    p = ACTIVATIONS[name].degree
    if p is not None:  # σ(cz) = c^p σ(z) for c > 0
        for c in (0.5, 3.0):
            torch.testing.assert_close(sigma(c * z.detach(), name), c**p * sigma(z.detach(), name))
    else:
        assert not torch.allclose(sigma(2 * z.detach(), name), 2 * sigma(z.detach(), name))


def _dense_X(x, M):
    X = torch.zeros(len(x), 2 * M, dtype=torch.float64)
    X[torch.arange(len(x)), x[:, 0]] = 1
    X[torch.arange(len(x)), M + x[:, 1]] = 1
    return X


def test_preactivation_one_net_and_members_equal_one_hot_matmul():
    torch.manual_seed(0)
    S, M, K, n = 3, 6, 5, 11
    W = torch.randn(S, 2 * M, K, dtype=torch.float64, requires_grad=True)
    x = torch.randint(0, M, (S, n, 2))
    Z = preactivation(W, x)  # (S, n, K), one batched gather
    assert Z.shape == (S, n, K)
    assert torch.equal(preactivation(W, x, member_rows(x, M)), Z)  # precomputed rows: the same gather
    g = torch.randn(S, n, K, dtype=torch.float64)
    (gW,) = torch.autograd.grad((Z * g).sum(), W)
    for s in range(S):
        dense = _dense_X(x[s], M) @ W[s]
        torch.testing.assert_close(Z[s], dense)
        torch.testing.assert_close(preactivation(W[s], x[s]), dense)  # the one-net path
        torch.testing.assert_close(gW[s], _dense_X(x[s], M).T @ g[s])  # backward: X^T g


def test_forward_with_members_equals_each_net():
    torch.manual_seed(1)
    S, M, K, n = 2, 5, 4, 7
    W, V = torch.randn(S, 2 * M, K), torch.randn(S, K, M)
    x = torch.randint(0, M, (S, n, 2))
    out = forward(W, V, x, "relusqr", output_scale=1.5)
    for s in range(S):
        ref = 1.5 * (torch.relu(_dense_X(x[s], M).float() @ W[s]) ** 2) @ V[s]
        torch.testing.assert_close(out[s], ref, rtol=1e-5, atol=1e-5)


def test_loss_rows_match_the_definitions():
    torch.manual_seed(2)
    S, n, M = 2, 5, 4
    out, y = torch.randn(S, n, M, dtype=torch.float64), torch.randint(0, M, (S, n))
    mse, ce = loss_rows("mse", out, y), loss_rows("ce", out, y)
    assert mse.shape == ce.shape == (S, n)
    for s in range(S):
        for i in range(n):
            o = out[s, i].tolist()
            mean = sum(o) / M
            target = [(1.0 if c == y[s, i] else 0.0) - 1 / M for c in range(M)]
            assert abs(mse[s, i].item() - sum((o[c] - mean - target[c]) ** 2 for c in range(M))) < 1e-12
            lse = torch.logsumexp(out[s, i], 0).item()
            assert abs(ce[s, i].item() - (lse - o[y[s, i]])) < 1e-12
    Y = nnf.one_hot(y, M).double()
    assert torch.equal(loss_rows("mse", out, y, Y), mse)
    assert abs(loss_sum("ce", out, y).item() - ce.sum().item()) < 1e-12
    assert abs(loss_sum("mse", out, y).item() - mse.sum().item()) < 1e-12
    with pytest.raises(ValueError, match="loss='l1'"):
        loss_rows("l1", out, y)


# ---------------------------------------------------------------- update rules

def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


TORCH_RULES = [
    ("adam", lambda p, lr, wd: torch.optim.Adam([p], lr=lr, weight_decay=wd, betas=(0.8, 0.99), eps=1e-6),
     lambda p, g, st, lr, wd: adam_(p, g, st, lr=lr, weight_decay=wd, betas=(0.8, 0.99), eps=1e-6)),
    ("adamw", lambda p, lr, wd: torch.optim.AdamW([p], lr=lr, weight_decay=wd),
     lambda p, g, st, lr, wd: adam_(p, g, st, lr=lr, weight_decay=wd, decoupled=True)),
    ("sgd", lambda p, lr, wd: torch.optim.SGD([p], lr=lr, weight_decay=wd),
     lambda p, g, st, lr, wd: sgd_(p, g, st, lr=lr, weight_decay=wd)),
    ("sgd_momentum", lambda p, lr, wd: torch.optim.SGD([p], lr=lr, weight_decay=wd, momentum=0.9, nesterov=True),
     lambda p, g, st, lr, wd: sgd_(p, g, st, lr=lr, weight_decay=wd, momentum=0.9, nesterov=True)),
    ("muon_torch", lambda p, lr, wd: torch.optim.Muon([p], lr=lr, weight_decay=wd, momentum=0.95, nesterov=True,
                                                      ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7,
                                                      ns_steps=5, adjust_lr_fn="original"),
     lambda p, g, st, lr, wd: muon_(p, g, st, lr=lr, weight_decay=wd, preset="torch")),
]


@pytest.mark.parametrize("shape", [(6, 10), (10, 6)])
@pytest.mark.parametrize("name, reference, rule", TORCH_RULES, ids=[r[0] for r in TORCH_RULES])
def test_scalar_update_is_bit_identical_to_torch(name, reference, rule, shape):
    torch.manual_seed(3)
    p0 = torch.randn(shape)
    lr, wd = 0.03, 0.1
    ref = torch.nn.Parameter(p0.clone())
    opt = reference(ref, lr, wd)
    p, state = p0.clone(), {}
    for g in _grads(shape, 5):
        ref.grad = g.clone()
        opt.step()
        rule(p, g.clone(), state, lr, wd)
        assert torch.equal(p, ref.detach()), name


MEMBER_RULES = [
    ("adam", lambda p, g, st, lr, wd: adam_(p, g, st, lr=lr, weight_decay=wd)),
    ("adamw", lambda p, g, st, lr, wd: adam_(p, g, st, lr=lr, weight_decay=wd, decoupled=True)),
    ("sgd_momentum", lambda p, g, st, lr, wd: sgd_(p, g, st, lr=lr, weight_decay=wd, momentum=0.9)),
    ("muon_li2", lambda p, g, st, lr, wd: muon_(p, g, st, lr=lr, weight_decay=wd, preset="li2")),
    ("muon_keller", lambda p, g, st, lr, wd: muon_(p, g, st, lr=lr, weight_decay=wd, preset="keller")),
    ("muon_torch", lambda p, g, st, lr, wd: muon_(p, g, st, lr=lr, weight_decay=wd, preset="torch")),
]


@pytest.mark.parametrize("name, rule", MEMBER_RULES, ids=[r[0] for r in MEMBER_RULES])
def test_batched_members_equal_separate_calls(name, rule):
    """One call on (S, m, n) with (S,) lr and wd equals S calls with scalars (a member with lr 0 stays)."""
    torch.manual_seed(4)
    S, shape = 4, (8, 12)
    lrs, wds = [0.05, 0.01, 0.0, 0.2], [0.0, 0.1, 0.3, 1e-3]
    P0 = torch.randn(S, *shape)
    P, state = P0.clone(), {}
    grads = _grads((S, *shape), 4)
    for g in grads:
        rule(P, g.clone(), state, torch.tensor(lrs), torch.tensor(wds))
    for s in range(S):
        p, st = P0[s].clone(), {}
        for g in grads:
            rule(p, g[s].clone(), st, lrs[s], wds[s])
        torch.testing.assert_close(P[s], p, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}, member {s}: {m}")
    assert torch.equal(P[2], P0[2])  # lr 0
