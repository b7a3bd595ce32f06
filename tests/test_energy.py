"""The energy E(w) = ½‖Ỹᵀσ(Xw)‖² and ∇E against a direct numpy evaluation and finite differences."""

import numpy as np
import pytest
import torch

from li2_lightning.analysis import energy as en
from li2_lightning.analysis.features import irrep_power, purity
from li2_lightning.analysis.irreps import fourier_blocks

SIG = {"sqr": (lambda z: z**2, lambda z: 2 * z),
       "relusqr": (lambda z: np.maximum(z, 0) ** 2, lambda z: 2 * np.maximum(z, 0)),
       "silu": (lambda z: z / (1 + np.exp(-z)),
                lambda z: (1 / (1 + np.exp(-z))) * (1 + z * (1 - 1 / (1 + np.exp(-z)))))}


def _full_table(M):
    a, b = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
    x = torch.tensor(np.stack([a.ravel(), b.ravel()], 1))
    return x, (x[:, 0] + x[:, 1]) % M


def _numpy_E(w, x, y, M, act):
    """½‖Ỹᵀσ(Xw)‖² with explicit one-hot X (n × 2M) and Ỹ = (I − 11ᵀ/n) Y."""
    n = len(y)
    X = np.zeros((n, 2 * M))
    X[np.arange(n), x[:, 0]] = 1
    X[np.arange(n), M + x[:, 1]] = 1
    Y = np.eye(M)[y]
    Yt = (np.eye(n) - np.ones((n, n)) / n) @ Y
    return 0.5 * np.sum((Yt.T @ SIG[act][0](X @ w)) ** 2), X, Yt


@pytest.mark.parametrize("act", sorted(SIG))
def test_energy_and_gradient_against_numpy_and_finite_differences(act):
    M, n, K = 7, 33, 5
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, M, (n, 2), generator=g)
    y = (x[:, 0] * 3 + x[:, 1]) % M  # any labels: E is defined for any targets
    W = torch.randn(2 * M, K, generator=g, dtype=torch.float64)
    E, grad = en.energy_grad(W, x, y, act)
    torch.testing.assert_close(en.energy(W, x, y, act), E)
    for j in range(K):
        w = W[:, j].numpy()
        ref, X, Yt = _numpy_E(w, x.numpy(), y.numpy(), M, act)
        assert float(E[j]) == pytest.approx(ref, rel=1e-10)
        z = X @ w  # Theorem 1: ∇E = Xᵀ diag(σ'(Xw)) ỸỸᵀ σ(Xw)
        np.testing.assert_allclose(grad[:, j].numpy(), X.T @ (SIG[act][1](z) * (Yt @ Yt.T @ SIG[act][0](z))),
                                   rtol=1e-9, atol=1e-10)
        h = 1e-6
        fd = np.array([(_numpy_E(w + h * e, x.numpy(), y.numpy(), M, act)[0]
                        - _numpy_E(w - h * e, x.numpy(), y.numpy(), M, act)[0]) / (2 * h) for e in np.eye(2 * M)])
        np.testing.assert_allclose(grad[:, j].numpy(), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("M,k", [(11, 1), (11, 4), (12, 5), (12, 6)])
def test_exact_single_frequency_maximum_energy(M, k):
    """w = [u; ±Pu], u a single frequency with any phase, unit norm, full table: brute force."""
    x, y = _full_table(M)
    m = np.arange(M)
    for phase, sign in [(0.0, 1), (0.7, -1)]:
        u = np.cos(2 * np.pi * k * m / M + phase)
        w = np.concatenate([u, sign * u[(-m) % M]])
        w /= np.linalg.norm(w)
        ref, _, _ = _numpy_E(w, x.numpy(), y.numpy(), M, "sqr")
        assert en.fourier_max_energy(M, k) == pytest.approx(ref, rel=1e-12)
    assert en.fourier_max_energy(M, 0) == 0.0
    # the blockwise search finds the same maximum, and nothing higher inside the block
    b = fourier_blocks(M)
    E = en.irrep_max_energies(x, y, b.Q, b.block_index, "sqr")
    assert float(E[k]) == pytest.approx(en.fourier_max_energy(M, k), rel=1e-6)


def test_real_to_complex_ratio_is_two():
    assert en.fourier_max_energy(12, 6) / en.fourier_max_energy(12, 1) == 2.0


def test_projected_ascent_ends_on_one_frequency():
    M = 13
    x, y = _full_table(M)
    W0 = torch.randn(2 * M, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W = en.ascend_energy(W0, x, y, "sqr", steps=400, lr=0.2)
    assert torch.allclose(W.norm(dim=0), torch.ones(6, dtype=torch.float64))
    pur = purity(irrep_power(W, fourier_blocks(M)))
    assert bool((pur > 0.99).all()), pur
    E = en.energy(W, x, y, "sqr")
    torch.testing.assert_close(E, torch.full_like(E, en.fourier_max_energy(M, 1)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("act", ["sqr", "relu", "silu"])
def test_normalized_energy_shortcut(act):
    M = 7
    x, y = _full_table(M)
    W = torch.randn(2 * M, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    from li2_lightning.analysis.gradients import hidden

    ref = en.energy(W / W.norm(dim=0), x, y, act)
    torch.testing.assert_close(en.normalized_energy(W, x, y, act, F=hidden(W, x, act)), ref)
    torch.testing.assert_close(en.normalized_energy(W, x, y, act), ref)
