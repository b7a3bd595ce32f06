"""Per-node feature measures in the irrep basis: power, purity, matching, coverage (docs/theory.md §6.5).

Every function takes the first-layer weights W of shape (2M, K): column j is hidden node j, rows
0..M-1 act on the operand h1 (the half called ``a`` below), rows M..2M-1 on h2 (``b``). All
analysis runs in float64 (complex128 for group Fourier coefficients) on W's device.

Mean removal. Adding a constant to either operand half of a node leaves the energy
E(w) = ½‖Ỹᵀσ(Xw)‖² unchanged for σ = x² (the constant only shifts every class's output alike,
and centring removes it), so each half's mean — its trivial-irrep component — is removed first.

Member dim. :func:`irrep_power`, :func:`purity`, :func:`dominant_irrep`, :func:`covered_blocks`
and :func:`coverage` also take a leading member dim (W (S, 2M, K), power (S, K, 2, B)) and
return one result per member, so a population's observables cost one batched projection.

What the energy maxima look like (checked by brute force in tests/test_features.py). With the full
table and σ = x², Ỹᵀσ(Xw) = 2·(a∗b − mean), the group convolution (a∗b)(c) = Σ_h a(h) b(h⁻¹c), so
with the group Fourier transform x̂(ρ) = Σ_g x(g) ρ(g) (:func:`group_fourier`) and Plancherel

    E(w) = (2/M) Σ_{k≠0} d_k ‖â_k b̂_k‖²_F.

This is invariant under a ↦ a(g·) and b ↦ b(·g) separately, so the maxima are not only the points
[u; ±Pu] of Theorem 2 (P e_h = e_{h⁻¹}) but also everything those translations reach: for Z_M the
phase of b relative to a is free, and the plain ±P cosine (:func:`inverse_alignment`) is not 1 at a
maximum. On the unit sphere E is maximal in block k exactly when â_k and b̂_k are rank one with the
row space of â_k equal to the column space of b̂_k, and ‖a‖ = ‖b‖. :func:`matching_score` measures
that translation-invariant form of "b ≈ ±Pa".
"""

from __future__ import annotations

import torch
from torch import Tensor

from li2_lightning.analysis.irreps import RealIrrepBasis, irreps

__all__ = [
    "block_power",
    "irrep_power",
    "purity",
    "dominant_irrep",
    "covered_blocks",
    "coverage",
    "group_fourier",
    "matching_score",
    "inverse_alignment",
]


def block_power(x: Tensor, basis: RealIrrepBasis, dtype: torch.dtype = torch.float64) -> Tensor:
    """Squared norm of x's component in each block of ``basis`` (no mean removal).

    The components are orthogonal, so the powers add up to ‖x‖² along dim 0. Use this for any
    tensor indexed by group element on dim 0 (a weight half, a gradient, a column of G_F).

    Args:
        x: (M, ...) real tensor, dim 0 indexed by group element.
        basis: The :class:`RealIrrepBasis` of the group (B blocks).
        dtype: precision of the projection (float64 by default).

    Returns:
        (B, ...) tensor of powers in ``dtype``.

    Raises:
        ValueError: If ``x.shape[0]`` is not the group order M.
    """
    M = basis.M
    if x.dim() < 1 or x.shape[0] != M:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (M, ...) with M={M}")
    x = x.detach().to(dtype)
    coef = basis.Q.to(x.device, dtype).T @ x.reshape(M, -1)  # (M, rest): coordinates in the basis
    index = basis.block_index.to(x.device)
    power = torch.zeros(basis.n_blocks, coef.shape[1], dtype=dtype, device=x.device)
    power.index_add_(0, index, coef.pow(2))
    return power.reshape(basis.n_blocks, *x.shape[1:])


def irrep_power(W: Tensor, basis: RealIrrepBasis, dtype: torch.dtype = torch.float64) -> Tensor:
    """Per node and operand half, the power of the mean-removed weights in each irrep block.

    The trivial block 0 is kept so that indices match ``basis`` blocks; after mean removal it is
    zero up to rounding. The non-trivial entries of a node sum to ‖a − ā‖² + ‖b − b̄‖².

    Args:
        W: (2M, K) first-layer weights; rows 0..M-1 act on h1, rows M..2M-1 on h2. Or (S, 2M, K):
            S members at once.
        basis: The :class:`RealIrrepBasis` of the group (:func:`~li2_lightning.analysis.irreps.
            real_blocks`), B blocks.
        dtype: precision (float64 by default). float32 is enough for purity and coverage: the
            powers are sums of M squares of an orthogonal projection, relative error ~1e-6, far
            below the 0.9 purity threshold's resolution; it halves the cost.

    Returns:
        (K, 2, B) tensor in ``dtype``: [j, 0, b] for the h1 half of node j, [j, 1, b] for the h2
        half; (S, K, 2, B) with a member dim.

    Raises:
        ValueError: If W is not (2M, K) or (S, 2M, K).
    """
    a, b = _halves(W, basis.M, dtype)  # (M, K) or (S, M, K)
    if W.dim() == 3:
        x = torch.stack([a, b], -2).movedim(1, 0)  # (M, S, 2, K)
        return block_power(x, basis, dtype).permute(1, 3, 2, 0)  # (S, K, 2, B)
    power = block_power(torch.stack([a, b], 1), basis, dtype)  # (B, 2, K): one projection for both halves
    return power.permute(2, 1, 0)


def purity(power: Tensor) -> Tensor:
    """Share of each node's non-trivial power held by its dominant block (docs/theory.md §6.5).

    Both operand halves are pooled: purity_j = max_b p_jb / Σ_b p_jb over blocks b ≠ 0 with
    p_jb = power[j, 0, b] + power[j, 1, b]. A node in a single block has purity 1; a random one
    about (largest block size) / (M − 1) or more. A node without non-trivial power gets 0.

    Args:
        power: (K, 2, B) from :func:`irrep_power` (or (S, K, 2, B)).

    Returns:
        (K,) float64 tensor in [0, 1] (or (S, K)).
    """
    pooled = _pooled(power)
    if pooled.shape[-1] == 0:
        return torch.zeros(pooled.shape[:-1], dtype=torch.float64, device=power.device)
    total = pooled.sum(-1)
    top = pooled.max(-1).values
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def dominant_irrep(power: Tensor) -> Tensor:
    """Index (into the basis blocks, so >= 1) of each node's dominant non-trivial block.

    Args:
        power: (K, 2, B) from :func:`irrep_power` (or (S, K, 2, B)).

    Returns:
        (K,) int64 tensor (or (S, K)); -1 for a node without non-trivial power.
    """
    pooled = _pooled(power)
    if pooled.shape[-1] == 0:
        return torch.full(pooled.shape[:-1], -1, dtype=torch.long, device=power.device)
    dom = pooled.argmax(-1) + 1
    return torch.where(pooled.sum(-1) > 0, dom, -1)


def covered_blocks(power: Tensor, purity_threshold: float = 0.9) -> Tensor:
    """Blocks held by at least one pure node.

    Block b is covered when some node has purity >= ``purity_threshold`` and dominant block b.
    The trivial block 0 is never covered (mean removal leaves it empty).

    Args:
        power: (K, 2, B) from :func:`irrep_power` (or (S, K, 2, B)).
        purity_threshold: Purity from which a node counts as pure, in (0, 1].

    Returns:
        (B,) bool tensor (or (S, B)).

    Raises:
        ValueError: If ``purity_threshold`` is outside (0, 1].
    """
    if not 0.0 < float(purity_threshold) <= 1.0:
        raise ValueError(f"purity_threshold={purity_threshold!r} is outside (0, 1]; "
                         "a typical value is 0.9")
    B = power.shape[-1]
    pure = purity(power) >= purity_threshold  # never true for a node without power
    if power.dim() == 4:  # members: block b of member s is covered if any pure node's dominant block is b
        dom = torch.where(pure, dominant_irrep(power), 0)  # impure nodes vote for the trivial block...
        hits = torch.zeros(power.shape[0], B, device=power.device).scatter_add_(1, dom, pure.float())
        return hits > 0  # ...with weight 0, so block 0 stays uncovered
    dom = dominant_irrep(power)[pure]
    covered = torch.zeros(B, dtype=torch.bool, device=power.device)
    covered[dom] = True
    return covered


def coverage(power: Tensor, purity_threshold: float = 0.9) -> float:
    """Share of the non-trivial blocks held by a pure node (docs/theory.md §6.5).

    coverage = #(covered non-trivial blocks) / (B − 1); 1.0 for a group with no non-trivial block.

    Args:
        power: (K, 2, B) from :func:`irrep_power` (or (S, K, 2, B)).
        purity_threshold: Purity from which a node counts as pure, in (0, 1].

    Returns:
        A float in [0, 1] (or an (S,) float64 tensor).

    Raises:
        ValueError: If ``purity_threshold`` is outside (0, 1].
    """
    covered = covered_blocks(power, purity_threshold)
    B = covered.shape[-1]
    if covered.dim() == 2:
        return (torch.ones(covered.shape[0], dtype=torch.float64, device=covered.device) if B <= 1
                else covered[:, 1:].sum(-1).double() / (B - 1))
    return 1.0 if B <= 1 else float(covered[1:].sum()) / (B - 1)


def group_fourier(x: Tensor, table: Tensor) -> list[Tensor]:
    """Group Fourier transform x̂(ρ_k) = Σ_g x(g) ρ_k(g) for every irrep ρ_k of :func:`irreps`.

    Plancherel: Σ_g |x(g)|² = (1/M) Σ_k d_k ‖x̂(ρ_k)‖²_F, and the convolution
    (a∗b)(c) = Σ_h a(h) b(h⁻¹c) has transform â b̂.

    Args:
        x: (M, K) real or complex tensor, dim 0 indexed by group element.
        table: (M, M) Cayley table.

    Returns:
        One (K, d_k, d_k) complex128 tensor per irrep, in the order of :func:`irreps`.

    Raises:
        ValueError: If the table is not a group's or ``x`` is not (M, K).
    """
    reps = irreps(table)
    M = reps[0].rho.shape[0]
    if x.dim() != 2 or x.shape[0] != M:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (M, K) with M={M}")
    xc = x.detach().to(torch.complex128)
    return [torch.einsum("mk,mij->kij", xc, r.rho.to(xc.device)) for r in reps]


def matching_score(W: Tensor, table: Tensor) -> Tensor:
    """How well each node's two operand halves match as at an energy maximum (docs/theory.md §4, §6.5).

    With a, b the mean-removed halves of node j and â_k, b̂_k their group Fourier coefficients
    (:func:`group_fourier`),

        match_j = Σ_{k≠0} (d_k/M) ‖â_k b̂_k‖_F / (‖a‖ ‖b‖)  ∈ [0, 1].

    By Cauchy–Schwarz and Plancherel it is 1 exactly when in every irrep â_k and b̂_k are rank one
    with the row space of â_k equal to the column space of b̂_k, and ‖b̂_k‖ ∝ ‖â_k‖ across
    irreps. This holds for Theorem 2's maxima [u; ±Pu] (u in one irrep, rank-one û: b̂ = ±ûᴴ) and
    for everything the symmetries of E (translating a on the left, b on the right) map them to,
    which is the whole set of maxima; the plain ±P cosine (:func:`inverse_alignment`) is not
    invariant under those. For abelian groups (d_k = 1) it reduces to Σ_k |â_k||b̂_k| / (M‖a‖‖b‖):
    equal power profiles of the two halves, any phases. A node with a zero half gets 0.

    Args:
        W: (2M, K) first-layer weights.
        table: (M, M) Cayley table of the group.

    Returns:
        (K,) float64 tensor.

    Raises:
        ValueError: If the table is not a group's or W is not (2M, K).
    """
    reps = irreps(table)
    M = reps[0].rho.shape[0]
    a, b = _halves(W, M)
    num = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    ac, bc = a.to(torch.complex128), b.to(torch.complex128)
    for d in sorted({r.dim for r in reps}):  # irreps of one dimension in one batched product
        same = [r.rho for r in reps[1:] if r.dim == d]
        if not same:  # only the trivial irrep has this dimension
            continue
        rho = torch.stack(same).to(a.device)  # (n, M, d, d)
        a_hat = torch.einsum("mk,nmij->nkij", ac, rho)  # (n, K, d, d)
        b_hat = torch.einsum("mk,nmij->nkij", bc, rho)
        num += (d / M) * torch.linalg.matrix_norm(a_hat @ b_hat).sum(0)  # â b̂: a acts first
    den = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def abelian_matching_score(power: Tensor) -> Tensor:
    """:func:`matching_score` of an abelian group, from the real block powers alone.

    With d_k = 1, Σ_k |â_k||b̂_k| / (M‖a‖‖b‖) equals Σ_blocks √(p_a p_b) / (‖a‖‖b‖), where p_a,
    p_b are a node's block powers in the two operand halves (a conjugate pair of characters is one
    real block). This skips the complex transforms when the power is already at hand.

    Args:
        power: (K, 2, B) from :func:`irrep_power` on an abelian group's real blocks.

    Returns:
        (K,) float64 tensor; 0 for a node with a zero half.
    """
    pa, pb = power[:, 0, 1:], power[:, 1, 1:]  # trivial block dropped, as the means are removed
    den = (pa.sum(1) * pb.sum(1)).sqrt()
    return torch.where(den > 0, (pa * pb).sqrt().sum(1) / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def inverse_alignment(W: Tensor, inverse: Tensor) -> Tensor:
    """The literal ±P check of Theorem 2: |⟨b, Pa⟩| / (‖a‖ ‖b‖) after mean removal.

    (Pa)[h] = a[h⁻¹]. This is 1 at the maxima [u; ±Pu] but not at the other, equally high maxima
    obtained by translating a or b (for Z_M: any relative phase), so gradient ascent on E does not
    drive it to 1; use :func:`matching_score` to judge features.

    Args:
        W: (2M, K) first-layer weights.
        inverse: (M,) int64, ``inverse[h]`` = index of h⁻¹ (``Group.inverse``).

    Returns:
        (K,) float64 tensor in [0, 1]; 0 for a node with a zero half.

    Raises:
        ValueError: If ``inverse`` is not an (M,) permutation matching W.
    """
    inverse = torch.as_tensor(inverse)
    if inverse.dim() != 1 or W.dim() != 2 or W.shape[0] != 2 * inverse.shape[0]:
        raise ValueError(f"inverse has shape {tuple(inverse.shape)} and W {tuple(W.shape)}; "
                         "expected inverse (M,) and W (2M, K)")
    M = inverse.shape[0]
    inverse = inverse.to(device=W.device, dtype=torch.long)
    if not torch.equal(inverse.sort().values, torch.arange(M, device=W.device)):
        raise ValueError("inverse is not a permutation of 0..M-1; pass Group.inverse")
    a, b = _halves(W, M)
    num = (b * a[inverse]).sum(0).abs()
    den = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _halves(W: Tensor, M: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Mean-removed operand halves a, b of W (2M, K), each (M, K); of W (S, 2M, K), each (S, M, K)."""
    if W.dim() not in (2, 3) or W.shape[-2] != 2 * M:
        raise ValueError(f"W has shape {tuple(W.shape)}; expected (2M, K) or (S, 2M, K) with M={M}")
    W = W.detach().to(dtype)
    a, b = W[..., :M, :], W[..., M:, :]
    return a - a.mean(-2, keepdim=True), b - b.mean(-2, keepdim=True)


def _pooled(power: Tensor) -> Tensor:
    """(K, B-1) non-trivial power with both halves added ((S, K, B-1) with a member dim)."""
    if power.dim() not in (3, 4) or power.shape[-2] != 2:
        raise ValueError(f"power has shape {tuple(power.shape)}; "
                         "expected (K, 2, B) or (S, K, 2, B) from irrep_power")
    return power[..., 1:].sum(-2)
