"""Newton-Schulz: singular values land in the band each schedule promises (checked by SVD).

The band is measured here by brute force on the scalar map: Newton-Schulz acts on every singular
value x = σ/‖G‖_F alone, x ↦ p_k(…p_1(x)) with p(x) = ax + bx³ + cx⁵. Over x ∈ [2e-3, 1] (float64
grid) the map covers:

    li2 schedule     [0.895, 1.157]
    Keller quintic   [0.682, 1.202]   ([0.682, 1.134] for x ≥ 1e-2)

and never exceeds the upper end for any x ∈ [0, 1]. Matrices then must reproduce the band up to
rounding: 1e-4 in float32, 0.04 in bfloat16 (measured worst: 2e-8 and 0.018).
"""

import pytest
import torch

from li2_lightning.optim import KELLER_COEFFICIENTS, LI2_COEFFICIENTS, newton_schulz

X_MIN = 2e-3
SCHEDULES = {"li2": LI2_COEFFICIENTS, "keller": KELLER_COEFFICIENTS}
TOL = {torch.float32: 1e-4, torch.bfloat16: 0.04}
SHAPES = [(48, 48), (24, 80), (80, 24), (71, 142), (1, 40), (40, 1)]


def scalar_band(schedule, x_min=X_MIN):
    """(lowest output over x ≥ x_min, highest output over all x) of the composed quintics."""
    x = torch.logspace(-6, 0, 200_001, dtype=torch.float64)
    y = x.clone()
    for a, b, c in schedule:
        y = a * y + b * y**3 + c * y**5
    return y[x >= x_min].min().item(), y.max().item()


def random_orthonormal(n, r, gen):
    return torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))[0]  # (n, r)


def test_documented_bands():
    lo, hi = scalar_band(LI2_COEFFICIENTS)
    assert 0.89 < lo < 0.90 and 1.15 < hi < 1.16
    lo, hi = scalar_band(KELLER_COEFFICIENTS)
    assert 0.68 < lo < 0.69 and 1.20 < hi < 1.21


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["li2", "keller"])
def test_singular_values_in_band(name, dtype):
    lo, hi = scalar_band(SCHEDULES[name])
    gen = torch.Generator().manual_seed(0)
    for m, n in SHAPES:
        r = min(m, n)
        s = torch.logspace(0, -2, r, dtype=torch.float64)[torch.randperm(r, generator=gen)]
        assert (s / s.norm()).min() >= X_MIN  # every singular value inside the promised range
        G = (random_orthonormal(m, r, gen) * s) @ random_orthonormal(n, r, gen).T  # (m, n)
        O = newton_schulz(G.float(), SCHEDULES[name], 5, dtype)
        assert O.shape == (m, n) and O.dtype == torch.float32
        sv = torch.linalg.svdvals(O.double())
        assert sv.min() >= lo - TOL[dtype], (m, n)
        assert sv.max() <= hi + TOL[dtype], (m, n)


@pytest.mark.parametrize("name", ["li2", "keller"])
def test_keeps_singular_vectors(name):
    """The output is U f(D) Vᵀ: aligned with U Vᵀ (positive inner product per direction)."""
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(30, 50, generator=gen)
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    O = newton_schulz(G, SCHEDULES[name], 5).double()
    f = torch.diagonal(U.T @ O @ Vh.T)  # f(σ_i) per direction
    off = U.T @ O @ Vh.T - torch.diag(f)
    assert off.abs().max() < 1e-4
    lo, hi = scalar_band(SCHEDULES[name])
    keep = S / S.norm() >= X_MIN
    assert f[keep].min() >= lo - 1e-4 and f.max() <= hi + 1e-4


@pytest.mark.parametrize("name", ["li2", "keller"])
def test_rank_deficient(name):
    """Rank 3 plus tiny noise: the 3 directions land in the band, the noise stays small."""
    gen = torch.Generator().manual_seed(2)
    G = torch.randn(40, 3, generator=gen) @ torch.randn(3, 60, generator=gen)
    G = G + 1e-7 * G.norm() * torch.randn(40, 60, generator=gen)
    sv = torch.linalg.svdvals(newton_schulz(G, SCHEDULES[name], 5).double())
    lo, hi = scalar_band(SCHEDULES[name])
    assert sv[:3].min() >= lo - 1e-4 and sv[:3].max() <= hi + 1e-4
    assert sv[3:].max() < 0.05  # slope at 0 is ~500-600 over five steps: 1e-7 noise stays ≪ 1


def test_batched_equals_loop_and_zero_stays_zero():
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(4, 20, 12, generator=gen)  # (S, m, n), tall
    batched = newton_schulz(G, LI2_COEFFICIENTS, 5)
    looped = torch.stack([newton_schulz(g, LI2_COEFFICIENTS, 5) for g in G])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    assert torch.equal(newton_schulz(torch.zeros(5, 7), KELLER_COEFFICIENTS, 5), torch.zeros(5, 7))


def test_single_triple_repeats():
    G = torch.randn(10, 16, generator=torch.Generator().manual_seed(4))
    one_triple = newton_schulz(G, KELLER_COEFFICIENTS[0], 5)
    torch.testing.assert_close(one_triple, newton_schulz(G, KELLER_COEFFICIENTS, 5))
    newton_schulz(G, KELLER_COEFFICIENTS[0], 8)  # a single triple allows any step count


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(G=torch.zeros(5), coefficients=LI2_COEFFICIENTS, steps=5), "shape"),
        (dict(G=torch.zeros(3, 3), coefficients=LI2_COEFFICIENTS, steps=6), "only 5 triples"),
        (dict(G=torch.zeros(3, 3), coefficients=LI2_COEFFICIENTS, steps=0), "positive"),
        (dict(G=torch.zeros(3, 3), coefficients=[(1.0, 2.0)], steps=1), "triple"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        newton_schulz(**kwargs)
