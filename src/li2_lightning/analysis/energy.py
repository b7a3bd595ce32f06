"""The energy E of Stage II (docs/theory.md §4, Theorem 1, Eq. 7) for all hidden nodes at once.

E(w) = ½ ‖Ỹᵀ σ(Xw)‖² and ∇E = Xᵀ diag(σ'(Xw)) ỸỸᵀ σ(Xw), evaluated on the rows given (the
training rows: the empirical energy). Shapes: index pairs x (n, 2), targets y (n,), W (2M, K)
with column j the node w_j; X is never formed (gathers and index_adds instead). Per-node
results are float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from li2_lightning.analysis.gradients import (HOMOGENEITY, centre, class_profile, class_sums,
                                              preactivation, sigma, sigma_prime)


def energy_from_F(F: torch.Tensor, y: torch.Tensor, M: int) -> torch.Tensor:
    """E_j = ½‖Ỹᵀ f_j‖² (K,) from activations F = σ(XW) (n, K), float64.

    ỸᵀF = YᵀF̃ is a per-class sum of the centred rows (M, K) (:func:`gradients.class_profile`).
    """
    return 0.5 * class_profile(F, y, M).square().sum(dim=0)


def energy(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, activation: str = "sqr") -> torch.Tensor:
    """E(w_j) = ½‖Ỹᵀσ(Xw_j)‖² for every column of W (2M, K) -> (K,), float64 (Eq. 7)."""
    M = W.shape[0] // 2
    return energy_from_F(sigma(preactivation(W, x), activation), y, M)


def energy_grad(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                activation: str = "sqr") -> tuple[torch.Tensor, torch.Tensor]:
    """E (K,) and ∇E = Xᵀ diag(σ'(Xw)) ỸỸᵀσ(Xw) (2M, K) for every column of W (Theorem 1).

    Computed in W's dtype (pass float64 W for finite-difference checks); E in float64.
    """
    M = W.shape[0] // 2
    Z = preactivation(W, x)  # (n, K)
    F = sigma(Z, activation)
    S = class_sums(centre(F), y, M)  # ỸᵀF (M, K)
    D = sigma_prime(Z, activation) * centre(S.index_select(0, y))  # σ' ∘ ỸỸᵀF (n, K)
    grad = torch.zeros_like(W).index_add_(0, x[:, 0], D).index_add_(0, x[:, 1] + M, D)  # XᵀD
    return 0.5 * S.to(torch.float64).square().sum(dim=0), grad


def normalized_energy(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, activation: str = "sqr",
                      F: Optional[torch.Tensor] = None, S: Optional[torch.Tensor] = None) -> torch.Tensor:
    """E(w_j / ‖w_j‖) (K,), float64: the energies of the nodes on the unit sphere (docs/theory.md §4).

    If F = σ(XW) is given and σ is p-homogeneous (x², ReLU, ReLU²), no forward pass is made:
    σ(Xw/‖w‖) = σ(Xw)/‖w‖^p, so E(w/‖w‖) = E(w)/‖w‖^{2p}. Zero columns get energy 0. ``S``
    may pass a precomputed ỸᵀF (:func:`gradients.class_profile` (F, y, M)).
    """
    M = W.shape[0] // 2
    norms = W.to(torch.float64).norm(dim=0)  # (K,)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    p = HOMOGENEITY.get(activation)
    if F is not None and p is not None:
        E_raw = energy_from_F(F, y, M) if S is None else 0.5 * S.square().sum(dim=0)
        E = E_raw / safe ** (2 * p)
    else:
        E = energy(W / safe.to(W.dtype), x, y, activation)
    return torch.where(norms > 0, E, torch.zeros_like(E))


def fourier_max_energy(M: int, k: int) -> float:
    """E of the exact single-frequency maximum for Z_M, full table, σ = x², ‖w‖ = 1 (Theorem 2).

    For w = [u; ±Pu] with u_m = a cos(2πkm/M) + b sin(2πkm/M) (P: e_h -> e_{−h}), normalised:
    Ỹᵀσ(Xw) has class profile ∝ cos(2πkc/M + φ) and E = M/4 when 2k ≢ 0 (mod M), M/2 for the
    real irrep k = M/2 (even M), 0 for k ≡ 0. The paper prints M/16 and M/8 (a factor dropped in
    its proof's cross term, docs/theory.md §4); the ratio 2 between the two kinds is the same.

    Raises:
        ValueError: on M < 2.
    """
    if M < 2:
        raise ValueError(f"M={M!r} is not accepted; accepted: an integer >= 2")
    k %= M
    if k == 0:
        return 0.0
    return M / 2 if 2 * k == M else M / 4


def ascend_energy(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, activation: str = "sqr",
                  steps: int = 500, lr: float = 0.1, basis: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Projected gradient ascent of E on the unit sphere for every column of W (2M, K) (Theorem 1).

    Each step: w ← normalise(w + lr · ∇E(w) / E_scale), with E_scale the mean of E over nodes at
    the start, so ``lr`` is scale free. With ``basis`` Q (2M, d) of orthonormal columns the ascent
    is restricted to span(Q) (the gradient is projected onto it). Returns unit columns (2M, K).
    """
    W = W.clone()
    if basis is not None:
        W = basis @ (basis.T @ W)
    W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-300)
    E0, _ = energy_grad(W, x, y, activation)
    scale = float(E0.mean()) or 1.0
    for _ in range(steps):
        _, g = energy_grad(W, x, y, activation)
        if basis is not None:
            g = basis @ (basis.T @ g)
        W = W + (lr / scale) * g
        W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-300)
    return W


def irrep_max_energies(x: torch.Tensor, y: torch.Tensor, Q: torch.Tensor, block_index: torch.Tensor,
                       activation: str = "sqr", starts: int = 4, steps: int = 100,
                       lr: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Per irrep block b, the largest E over unit w whose two halves lie in block b (B,), float64.

    The reference energies of exact maxima on the rows given (docs/theory.md §6.6): Theorem 2's maxima are
    w = [u; ±Pu] with u in one irrep, so projected gradient ascent (as :func:`ascend_energy`) is
    run inside span{[Q_b; 0], [0; Q_b]} from ``starts`` seeded random points per block, all blocks
    at once. For Z_M, the full table and σ = x² this gives :func:`fourier_max_energy`.

    Args:
        x: (n, 2) index pairs. y: (n,) targets. Q: (M, M) orthonormal basis with columns grouped
            by block (``irreps.real_blocks(table).Q``). block_index: (M,) block of each column.
        activation: σ. starts: random starts per block. steps: ascent steps. lr: step size in
            units of the starting mean energy. seed: seed of the starts.
    """
    Q = Q.to(torch.float64)
    M, B = Q.shape[0], int(block_index.max()) + 1
    cols = torch.arange(B).repeat_interleave(starts)  # block of each candidate
    mask = (block_index[:, None] == cols[None, :]).to(torch.float64)  # (M, C) coefficients kept
    g = torch.Generator().manual_seed(seed)

    def project(A: torch.Tensor) -> torch.Tensor:  # (2M, C) -> its part in each column's block
        return torch.cat([Q @ (mask * (Q.T @ A[:M])), Q @ (mask * (Q.T @ A[M:]))])

    W = project(torch.randn(2 * M, len(cols), generator=g, dtype=torch.float64))
    W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-300)
    scale = float(energy(W, x, y, activation).mean()) or 1.0
    for _ in range(steps):
        _, grad = energy_grad(W, x, y, activation)
        W = W + (lr / scale) * project(grad)
        W = W / W.norm(dim=0, keepdim=True).clamp_min(1e-300)
    E = energy(W, x, y, activation)
    return torch.full((B,), float("-inf"), dtype=torch.float64).scatter_reduce(0, cols, E, "amax")


def block_max_energy(x: torch.Tensor, y: torch.Tensor, M: int, block_basis: torch.Tensor,
                     activation: str = "sqr", starts: int = 8, steps: int = 100,
                     seed: int = 0) -> float:
    """The largest E over unit w with both operand halves in span(``block_basis``) (M, d).

    One block of :func:`irrep_max_energies` (the basis is orthonormalised first).
    """
    Q, _ = torch.linalg.qr(block_basis.to(torch.float64))  # (M, d)
    Qfull, _ = torch.linalg.qr(torch.cat([Q, torch.eye(M, dtype=torch.float64)], 1))
    Qfull = torch.cat([Q, Qfull[:, Q.shape[1]:M]], 1)  # block 0 = span(Q), block 1 = the rest
    index = (torch.arange(M) >= Q.shape[1]).long()
    return float(irrep_max_energies(x, y, Qfull, index, activation, starts, steps, seed=seed)[0])


def energy_ratio(E: torch.Tensor, E_ref: float) -> torch.Tensor:
    """E_j / E_ref (K,): 1 means node j sits at the energy of an exact maximum."""
    return E / E_ref if E_ref > 0 and math.isfinite(E_ref) else torch.full_like(E, float("nan"))


def block_energy_ratio(E: torch.Tensor, dominant: torch.Tensor, E_block: torch.Tensor) -> torch.Tensor:
    """E_j / E_max(b_j) (K,), float64: each node's energy over the maximum of its own block.

    b_j is node j's dominant irrep block (``features.dominant_irrep``) and E_max(b) the largest
    energy of a unit w with both halves in block b (:func:`irrep_max_energies`), so 1 means the
    node sits exactly on the maximum of the irrep it has learned (Theorem 2), whatever that
    irrep's own maximum is. NaN for a node without a dominant block (b_j = −1) or whose block has
    no positive finite maximum.

    Args:
        E: (K,) energies E(w_j/‖w_j‖). dominant: (K,) block index per node, −1 for none.
        E_block: (B,) per-block maxima.
    """
    ref = E_block.to(device=E.device, dtype=torch.float64)[dominant.clamp_min(0)]  # (K,)
    ok = (dominant >= 0) & torch.isfinite(ref) & (ref > 0)
    return torch.where(ok, E.to(torch.float64) / torch.where(ok, ref, torch.ones_like(ref)),
                       torch.full_like(ref, float("nan")))
