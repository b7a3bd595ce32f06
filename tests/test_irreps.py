"""Irreps and real isotypic blocks against brute-force references written here."""

import math

import pytest
import torch

from li2_lightning.analysis.irreps import (
    block_projectors,
    fourier_blocks,
    irreps,
    is_cyclic_table,
    real_blocks,
)
from li2_lightning.groups import make_group

# group: (complex dims, real block sizes, Frobenius–Schur types) in the order irreps()/real_blocks()
# promise: dimension first; trivial first
EXPECTED = {
    "Z12": ([1] * 12, [1, 2, 2, 2, 2, 2, 1], None),
    "Z4xZ7": ([1] * 28, None, None),
    "D7": ([1, 1, 2, 2, 2], [1, 1, 4, 4, 4], ["real"] * 5),
    "Q8": ([1, 1, 1, 1, 2], [1, 1, 1, 1, 4], ["real"] * 4 + ["quaternionic"]),
    "A4": ([1, 1, 1, 3], [1, 2, 9], ["real", "complex", "complex", "real"]),
    "S4": ([1, 1, 2, 3, 3], [1, 1, 4, 9, 9], ["real"] * 5),
}
GROUPS = list(EXPECTED)


def conjugacy_classes(table):
    """Brute force: the sets {g x g⁻¹ : g}."""
    M = table.shape[0]
    T = table.tolist()
    inv = [row.index(0) for row in T]
    return {frozenset(T[T[g][x]][inv[g]] for g in range(M)) for x in range(M)}


def regular_left(table):
    """L[g] e_h = e_{g·h}, as (M, M, M) real matrices."""
    M = table.shape[0]
    L = torch.zeros(M, M, M, dtype=torch.float64)
    for g in range(M):
        L[g, table[g], torch.arange(M)] = 1.0
    return L


def regular_right(table):
    """R[g] e_h = e_{h·g⁻¹}."""
    M = table.shape[0]
    inv = (table == 0).to(torch.long).argmax(1)
    R = torch.zeros(M, M, M, dtype=torch.float64)
    for g in range(M):
        R[g, table[:, inv[g]], torch.arange(M)] = 1.0
    return R


def fourier_projectors(M):
    """Projector of block k built from cos/sin, k = 0..M//2."""
    m = torch.arange(M, dtype=torch.float64)
    out = []
    for k in range(M // 2 + 1):
        vecs = [torch.cos(2 * math.pi * k * m / M)]
        if 0 < k and 2 * k != M:
            vecs.append(torch.sin(2 * math.pi * k * m / M))
        V = torch.stack(vecs, 1)
        out.append(V @ torch.linalg.pinv(V))  # projector onto span, no normalization assumed
    return out


@pytest.fixture(scope="module", params=GROUPS)
def group(request):
    return request.param, make_group(request.param)


def test_cyclic_real_blocks_are_exactly_fourier():
    G = make_group("Z12")
    assert is_cyclic_table(G.table)
    basis = real_blocks(G.table)
    assert basis.labels == tuple(f"k={k}" for k in range(7))
    ref = fourier_projectors(12)
    P = block_projectors(basis)
    assert len(P) == len(ref)
    for k in range(7):
        torch.testing.assert_close(P[k], ref[k], atol=1e-12, rtol=0)
    # the columns themselves are cos, sin (fourier_blocks promises that order)
    m = torch.arange(12, dtype=torch.float64)
    torch.testing.assert_close(basis.Q[:, 1], torch.cos(2 * math.pi * m / 12) * math.sqrt(2 / 12))
    torch.testing.assert_close(basis.Q[:, 2], torch.sin(2 * math.pi * m / 12) * math.sqrt(2 / 12))
    assert basis.irrep_ids[1] == (1, 11) and basis.irrep_ids[6] == (6,)


def test_relabelled_cyclic_group_gives_fourier_blocks_numerically():
    """A shuffled Z12 table is not detected as cyclic: the numerical path finds the same blocks."""
    M = 12
    gen = torch.Generator().manual_seed(3)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(M - 1, generator=gen)])
    r = torch.arange(M)
    table = perm[(r[:, None] + r[None, :]) % M]  # new label of old element x is perm[x]
    T = torch.empty_like(table)
    T[perm[:, None], perm[None, :]] = table  # T[perm a, perm b] = perm[a + b]
    assert not is_cyclic_table(T)
    basis = real_blocks(T)
    assert basis.labels[0] == "trivial"
    S = torch.zeros(M, M, dtype=torch.float64)
    S[perm, r] = 1.0  # relabelling matrix: e_x -> e_{perm x}
    ref = [S @ P @ S.T for P in fourier_projectors(M)]
    got = block_projectors(basis)
    assert len(got) == len(ref)
    for P in ref:  # every Fourier block appears exactly once (order: by character, not by k)
        hits = [float((P - Pb).abs().max()) < 1e-9 for Pb in got]
        assert sum(hits) == 1


def test_cyclic_characters_are_exponentials():
    M = 12
    reps = irreps(make_group("Z12").table)
    m = torch.arange(M, dtype=torch.float64)
    for k, r in enumerate(reps):
        ref = torch.exp(2j * math.pi * k * m / M)
        torch.testing.assert_close(r.character, ref, atol=1e-10, rtol=0)
        assert r.conjugate == (-k) % M
        assert r.type == ("real" if k in (0, 6) else "complex")


def test_dimensions_and_class_count(group):
    name, G = group
    reps = irreps(G.table)
    dims = [r.dim for r in reps]
    assert dims == EXPECTED[name][0]
    assert sum(d * d for d in dims) == G.order
    assert len(reps) == len(conjugacy_classes(G.table))
    torch.testing.assert_close(reps[0].character, torch.ones(G.order, dtype=torch.complex128))
    if EXPECTED[name][2] is not None:
        assert [r.type for r in reps] == EXPECTED[name][2]


def test_homomorphism_and_unitarity(group):
    _, G = group
    T = G.table
    for r in irreps(T):
        assert r.rho.dtype == torch.complex128 and r.rho.shape == (G.order, r.dim, r.dim)
        prod = r.rho[:, None] @ r.rho[None, :]  # (M, M, d, d): [a, b] = rho(a) rho(b)
        torch.testing.assert_close(prod, r.rho[T], atol=1e-10, rtol=0)
        eye = torch.eye(r.dim, dtype=torch.complex128).expand_as(r.rho)
        torch.testing.assert_close(r.rho @ r.rho.mH, eye, atol=1e-10, rtol=0)
        torch.testing.assert_close(r.character, r.rho.diagonal(dim1=1, dim2=2).sum(-1))


def test_schur_orthogonality_and_characters(group):
    _, G = group
    M = G.order
    reps = irreps(G.table)
    # all matrix entries as functions on the group: Σ_g rho_k(g)_ij conj(rho_l(g)_mn) = M/d δ δ δ
    cols, scale = [], []
    for r in reps:
        cols.append(r.rho.reshape(M, -1))
        scale += [M / r.dim] * (r.dim**2)
    F = torch.cat(cols, 1)  # (M, Σ d²)
    gram = F.T @ F.conj()
    torch.testing.assert_close(gram, torch.diag(torch.tensor(scale, dtype=torch.complex128)),
                               atol=1e-9, rtol=0)
    chars = torch.stack([r.character for r in reps])
    eye = torch.eye(len(reps), dtype=torch.complex128)
    torch.testing.assert_close(chars @ chars.conj().T / M, eye, atol=1e-10, rtol=0)
    # Frobenius–Schur indicator from its definition
    for r in reps:
        assert r.indicator == round(float(r.character[G.table.diagonal()].sum().real) / M)


def test_real_blocks_orthogonal_sizes_and_invariant(group):
    name, G = group
    M = G.order
    basis = real_blocks(G.table)
    Q = basis.Q
    assert Q.dtype == torch.float64 and Q.shape == (M, M)
    torch.testing.assert_close(Q.T @ Q, torch.eye(M, dtype=torch.float64), atol=1e-10, rtol=0)
    reps = irreps(G.table)
    assert sum(basis.sizes) == M and basis.n_blocks == len(basis.labels) == len(basis.dims)
    for size, ids, d in zip(basis.sizes, basis.irrep_ids, basis.dims):
        assert size == d * d * len(ids) and all(reps[i].dim == d for i in ids)
    assert sorted(i for ids in basis.irrep_ids for i in ids) == list(range(len(reps)))
    if EXPECTED[name][1] is not None:
        assert list(basis.sizes) == EXPECTED[name][1]
    else:  # Z4xZ7: trivial, the one real character of order 2, then 13 conjugate pairs
        assert sorted(basis.sizes) == [1, 1] + [2] * 13
    assert basis.sizes[0] == 1
    torch.testing.assert_close(basis.Q[:, 0].abs(), torch.full((M,), M**-0.5, dtype=torch.float64))
    torch.testing.assert_close(basis.block_index.bincount(), torch.tensor(basis.sizes))

    P = block_projectors(basis)
    torch.testing.assert_close(P.sum(0), torch.eye(M, dtype=torch.float64), atol=1e-10, rtol=0)
    for ops in (regular_left(G.table), regular_right(G.table)):
        for b, s in enumerate(basis.block_slices):
            Qb = Q[:, s]
            moved = ops @ Qb  # (M, M, size): each group element applied to the block
            leak = moved - P[b] @ moved
            assert float(leak.abs().max()) < 1e-10, (name, b)


def test_cache_and_validation():
    G = make_group("S4")
    assert real_blocks(G.table) is real_blocks(G.table.clone())
    assert irreps(G.table)[3] is irreps(G.table.clone().to(torch.int32))[3]
    bad = G.table.clone()
    bad[0, 0], bad[0, 1] = int(G.table[0, 1]), int(G.table[0, 0])
    with pytest.raises(ValueError, match="permutation"):
        irreps(bad)
    with pytest.raises(ValueError, match="dtype"):
        real_blocks(G.table.double())
    with pytest.raises(ValueError, match="shape"):
        irreps(G.table[:3])
    with pytest.raises(ValueError, match="M=0"):
        fourier_blocks(0)
