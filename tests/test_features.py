"""Feature measures: purity, coverage and the matching check, against brute-force energies."""

import math

import pytest
import torch

from li2_lightning.analysis.features import (
    abelian_matching_score,
    block_power,
    covered_blocks,
    coverage,
    dominant_irrep,
    group_fourier,
    inverse_alignment,
    irrep_power,
    matching_score,
    purity,
)
from li2_lightning.analysis.irreps import irreps, real_blocks
from li2_lightning.groups import make_group


def wave(M, k, phase=0.0):
    m = torch.arange(M, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * m / M + phase)


def brute_energy(W, table):
    """E(w) = ½‖Ỹᵀ σ(Xw)‖² per column, σ = x², full table, X = one-hot(h1) ‖ one-hot(h2)."""
    M = table.shape[0]
    h1, h2 = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    X = torch.cat([torch.nn.functional.one_hot(h1.flatten(), M),
                   torch.nn.functional.one_hot(h2.flatten(), M)], 1).double()  # (M², 2M)
    Y = torch.nn.functional.one_hot(table.flatten(), M).double()
    Yc = Y - Y.mean(0)
    return 0.5 * (Yc.T @ (X @ W) ** 2).pow(2).sum(0)


def ascend(table, K, steps, seed):
    """Projected gradient ascent of the brute-force energy on the unit sphere, K random starts."""
    M = table.shape[0]
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(2 * M, K, dtype=torch.float64, generator=gen)
    W = W / W.norm(dim=0)
    for _ in range(steps):
        W = W.detach().requires_grad_(True)
        E = brute_energy(W, table)
        (grad,) = torch.autograd.grad(E.sum(), W)
        with torch.no_grad():
            tangent = grad - (grad * W).sum(0) * W
            W = W + 0.5 * tangent / (4 * E)  # step ∝ 1/E: E is quartic, its curvature scales with E
            W = W / W.norm(dim=0)
    return W.detach()


def test_single_frequency_node_is_pure():
    M = 12
    basis = real_blocks(make_group("Z12").table)
    cols = []
    for k in range(1, 7):
        a = 0.7 * wave(M, k, 0.3) + 2.0  # constant offsets are removed
        b = -1.3 * wave(M, k, 1.1 if k != 6 else 0.0) - 0.5
        cols.append(torch.cat([a, b]))
    W = torch.stack(cols, 1)  # (2M, 6)
    power = irrep_power(W, basis)
    assert power.shape == (6, 2, 7)
    assert float(power[:, :, 0].abs().max()) < 1e-24
    torch.testing.assert_close(purity(power), torch.ones(6, dtype=torch.float64))
    assert dominant_irrep(power).tolist() == [1, 2, 3, 4, 5, 6]
    a = W[:M] - W[:M].mean(0)
    torch.testing.assert_close(power[:, 0].sum(1), a.pow(2).sum(0))  # power adds up to ‖a − ā‖²


def test_pure_node_in_nonabelian_block():
    G = make_group("S4")
    basis = real_blocks(G.table)
    gen = torch.Generator().manual_seed(0)
    for b in range(1, basis.n_blocks):
        Qb = basis.Q[:, basis.block_slices[b]]
        a = Qb @ torch.randn(Qb.shape[1], dtype=torch.float64, generator=gen)
        c = Qb @ torch.randn(Qb.shape[1], dtype=torch.float64, generator=gen)
        power = irrep_power(torch.cat([a, c])[:, None], basis)
        assert float(purity(power)[0]) > 1 - 1e-12
        assert int(dominant_irrep(power)[0]) == b


def test_random_nodes_have_low_purity():
    gen = torch.Generator().manual_seed(1)
    for name in ("Z12", "S4"):
        G = make_group(name)
        W = torch.randn(2 * G.order, 300, generator=gen)
        p = purity(irrep_power(W, real_blocks(G.table)))
        assert p.dtype == torch.float64
        assert float(p.mean()) < 0.6 and float(p.max()) < 0.9
        assert coverage(irrep_power(W, real_blocks(G.table))) == 0.0


def test_coverage_counts_distinct_pure_blocks():
    M = 12
    basis = real_blocks(make_group("Z12").table)

    def node(mix):
        a = sum(c * wave(M, k, 0.4 * k) for k, c in mix.items())
        return torch.cat([a, a.roll(3)])

    W = torch.stack([
        node({1: 1.0}),  # pure k=1
        node({3: 1.0}),  # pure k=3, twice: counted once
        node({3: -2.0}),
        node({2: math.sqrt(0.7), 4: math.sqrt(0.3)}),  # purity 0.7, dominant k=2
        torch.zeros(2 * M),  # dead node
        torch.ones(2 * M),  # constant only: no non-trivial power
    ], 1)
    power = irrep_power(W, basis)
    p = purity(power)
    torch.testing.assert_close(p, torch.tensor([1, 1, 1, 0.7, 0, 0], dtype=torch.float64))
    assert dominant_irrep(power).tolist() == [1, 3, 3, 2, -1, -1]
    assert covered_blocks(power).tolist() == [False, True, False, True, False, False, False]
    assert coverage(power) == pytest.approx(2 / 6)
    assert coverage(power, purity_threshold=0.6) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="purity_threshold"):
        coverage(power, purity_threshold=0.0)
    with pytest.raises(ValueError, match="W has shape"):
        irrep_power(W[:-1], basis)
    with pytest.raises(ValueError, match="x has shape"):
        block_power(torch.zeros(5), basis)


def test_block_power_is_orthogonal_split():
    G = make_group("A4")
    basis = real_blocks(G.table)
    x = torch.randn(G.order, 3, 5, generator=torch.Generator().manual_seed(2))
    power = block_power(x, basis)
    assert power.shape == (basis.n_blocks, 3, 5)
    torch.testing.assert_close(power.sum(0), x.double().pow(2).sum(0))


def test_energy_closed_form_matches_brute_force():
    """E = (2/M) Σ_{k≠0} d_k ‖â_k b̂_k‖²_F fixes the product order used by matching_score."""
    for name in ("S4", "D7", "Z12"):
        G = make_group(name)
        M = G.order
        W = torch.randn(2 * M, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        reps = irreps(G.table)
        a_hat, b_hat = group_fourier(W[:M], G.table), group_fourier(W[M:], G.table)
        closed = sum(2 / M * r.dim * torch.linalg.matrix_norm(ah @ bh) ** 2
                     for r, ah, bh in zip(reps[1:], a_hat[1:], b_hat[1:]))
        torch.testing.assert_close(closed, brute_energy(W, G.table))
        # Plancherel for the transform itself
        plancherel = sum(r.dim / M * torch.linalg.matrix_norm(ah) ** 2
                         for r, ah in zip(reps, a_hat))
        torch.testing.assert_close(plancherel, W[:M].pow(2).sum(0))


def test_matching_on_exact_points_cyclic():
    """[u; ±Pu] scores 1; translating b keeps E and the matching score, not the ±P cosine."""
    G = make_group("Z11")
    M = G.order
    u = wave(M, 3, 0.9)
    Pu = u[G.inverse]
    s = 1  # translate b by 1: phase shift 2π·3/11 ≈ 98°, far from a multiple of π
    W = torch.stack([torch.cat([u, Pu]), torch.cat([u, -Pu]), torch.cat([u, Pu.roll(s)])], 1)
    E = brute_energy(W / W.norm(dim=0), G.table)
    torch.testing.assert_close(E, torch.full((3,), M / 4, dtype=torch.float64))  # all maxima
    torch.testing.assert_close(matching_score(W, G.table), torch.ones(3, dtype=torch.float64))
    align = inverse_alignment(W, G.inverse)
    torch.testing.assert_close(align[:2], torch.ones(2, dtype=torch.float64))
    assert float(align[2]) < 0.9


def test_matching_orientation_nonabelian():
    """D7: b = Pu is a maximum, b = u (no P) can have zero energy; the score tells them apart."""
    G = make_group("D7")
    M, n = G.order, 7
    # real 2-D irrep built here: index f·n + k is r^k s^f, r ↦ rotation by 2π/7, s ↦ reflection
    R = torch.zeros(M, 2, 2, dtype=torch.float64)
    for f in range(2):
        for k in range(n):
            t = 2 * math.pi * k / n
            rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            ref = torch.tensor([[1.0, 0.0], [0.0, -1.0]]) if f else torch.eye(2)
            R[f * n + k] = (rot @ ref).double()
    torch.testing.assert_close(R[:, None] @ R[None, :], R[G.table])  # really a representation
    u = R[:, 0, 1]  # matrix coefficient: rank-one Fourier coefficient in this irrep
    W = torch.stack([torch.cat([u, u[G.inverse]]), torch.cat([u, -u[G.inverse]]),
                     torch.cat([u, u])], 1)
    E = brute_energy(W / W.norm(dim=0), G.table)
    torch.testing.assert_close(E[:2], torch.full((2,), M / 4, dtype=torch.float64))
    assert float(E[2]) < 1e-10
    score = matching_score(W, G.table)
    torch.testing.assert_close(score[:2], torch.ones(2, dtype=torch.float64))
    assert float(score[2]) < 1e-6
    assert float(purity(irrep_power(W, real_blocks(G.table))).min()) > 1 - 1e-12


@pytest.mark.parametrize("name, maxima", [("Z11", [11 / 4]), ("D7", [14 / 4, 14 / 2])])
def test_gradient_ascent_reaches_pure_matched_maxima(name, maxima):
    """Ascent on the brute-force energy from random unit w ends pure and matched (Theorem 2)."""
    G = make_group(name)
    W = ascend(G.table, K=12, steps=300, seed=0)
    E = brute_energy(W, G.table)
    nearest = torch.stack([(E - m).abs() for m in maxima]).min(0).values
    assert float(nearest.max()) < 1e-6 * max(maxima)
    power = irrep_power(W, real_blocks(G.table))
    assert float(purity(power).min()) > 0.99
    assert float(matching_score(W, G.table).min()) > 0.99
    if name == "Z11":  # the relative phase stays where the random start put it
        assert float(inverse_alignment(W, G.inverse).min()) < 0.9


@pytest.mark.parametrize("spec", ["Z12", "Z4xZ7"])
def test_abelian_matching_score_from_power_equals_the_fourier_definition(spec):
    G = make_group(spec)
    torch.manual_seed(0)
    W = torch.randn(2 * G.order, 9, dtype=torch.float64)
    W[:, 0] = 0.0  # a dead node scores 0 both ways
    power = irrep_power(W, real_blocks(G.table))
    torch.testing.assert_close(abelian_matching_score(power), matching_score(W, G.table))
