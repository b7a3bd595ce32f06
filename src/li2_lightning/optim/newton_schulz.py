"""Newton-Schulz orthogonalization: the pure kernel behind Muon (docs/theory.md §8).

Muon replaces an update G = U D Vᵀ by (approximately) U Vᵀ. Newton-Schulz gets there with matrix
products only: after scaling G so that every singular value is at most 1, each step applies an odd
quintic p(σ) = aσ + bσ³ + cσ⁵ to every singular value at once,

    X ← aX + (bA + cA²)X,   A = XXᵀ,

so that a few steps push all singular values of X towards 1 while keeping U and V. The coefficient
schedule decides how close to 1 they land (the band below) and how fast small singular values rise.

Named schedules (one (a, b, c) triple per step), with the band where five steps put every
singular value σ ≥ 2e-3·‖G‖_F (brute force over the scalar map, float64; float32 matrices match
it to 1e-7, bfloat16 ones to ~0.02; see ``tests/test_optim_newton_schulz.py``):

- ``LI2_COEFFICIENTS``: the five per-step triples of the Li2 author's runs (docs/theory.md §8):
  [0.895, 1.157]. Slope at zero ∏a ≈ 589.
- ``KELLER_COEFFICIENTS``: Keller Jordan's quintic (3.4445, −4.7750, 2.0315) at every step:
  [0.682, 1.202] ([0.682, 1.134] for σ ≥ 1e-2·‖G‖_F): one fixed triple tuned for a steep slope
  at zero at the price of accuracy (the "S' ~ Uniform(0.5, 1.5)" of KellerJordan/Muon). Slope
  at zero 3.4445⁵ ≈ 485.

No schedule's output exceeds its upper end for any σ; smaller σ are raised by at most the slope at
zero and may end below the band (an exactly zero σ stays zero).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["KELLER_COEFFICIENTS", "KELLER_QUINTIC", "LI2_COEFFICIENTS", "COEFFICIENT_SCHEDULES", "newton_schulz"]

Triple = tuple[float, float, float]

#: Per-step (a, b, c) of the Li2 author's Muon (docs/theory.md §8), five steps.
LI2_COEFFICIENTS: tuple[Triple, ...] = (
    (4.01, -9.22, 5.80),
    (3.49, -6.38, 3.23),
    (3.34, -6.21, 3.20),
    (3.64, -7.48, 4.43),
    (3.46, -5.35, 2.85),
)

#: Keller Jordan's quintic, tuned for the largest slope at zero (KellerJordan/Muon).
KELLER_QUINTIC: Triple = (3.4445, -4.7750, 2.0315)

#: The quintic repeated for Muon's customary five steps.
KELLER_COEFFICIENTS: tuple[Triple, ...] = (KELLER_QUINTIC,) * 5

#: Schedules by name, as the optimizer's presets refer to them.
COEFFICIENT_SCHEDULES: dict[str, tuple[Triple, ...]] = {"li2": LI2_COEFFICIENTS, "keller": KELLER_COEFFICIENTS}


def _schedule(coefficients: Triple | Sequence[Triple], steps: int) -> list[Triple]:
    """Per-step triples for ``steps`` steps: one triple is repeated, a schedule is cut to length."""
    if steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    coefficients = list(coefficients)
    if len(coefficients) == 3 and all(isinstance(c, (int, float)) for c in coefficients):
        return [tuple(coefficients)] * steps  # type: ignore[list-item]
    if not coefficients or any(len(t) != 3 for t in coefficients):
        raise ValueError(
            f"`coefficients` must be one (a, b, c) triple or a sequence of triples, got {coefficients!r}."
        )
    if len(coefficients) < steps:
        raise ValueError(
            f"`steps`={steps} but the coefficient schedule has only {len(coefficients)} triples; "
            f"use at most {len(coefficients)} steps or a single (a, b, c) triple, which repeats."
        )
    return [tuple(t) for t in coefficients[:steps]]  # type: ignore[misc]


def newton_schulz(
    G: Tensor,
    coefficients: Triple | Sequence[Triple],
    steps: int,
    dtype: torch.dtype = torch.float32,
    eps: float = 1e-7,
    arithmetic: str = "keller",
) -> Tensor:
    """Approximate the orthogonal factor U Vᵀ of G = U D Vᵀ by ``steps`` Newton-Schulz steps.

    X₀ = G / (‖G‖_F + eps), transposed when tall so that A = XXᵀ is the smaller Gram matrix; then
    X ← aX + (bA + cA²)X with the step's (a, b, c). ``arithmetic`` picks how that is rounded:
    ``"keller"`` as KellerJordan/Muon writes it (B = bA + (cA)A, X = aX + BX), ``"torch"`` as
    torch.optim.Muon does (X₀ = G / max(‖G‖_F, eps), each step two fused ``addmm``, batched as
    ``baddbmm``), so that a 2-D G in bfloat16 reproduces torch's kernel bit for bit. Singular vectors are kept exactly (up to
    rounding); singular values σ ↦ p_k(…p_1(σ/‖G‖_F)) land in the schedule's band (module docstring).

    Args:
        G: (..., m, n) matrices; leading dims are a batch (e.g. (S, m, n) for a population), each
            matrix normalized by its own Frobenius norm.
        coefficients: one (a, b, c) triple used at every step, or a per-step schedule with at least
            ``steps`` triples (``LI2_COEFFICIENTS``, ``KELLER_COEFFICIENTS``).
        steps: number of Newton-Schulz steps.
        dtype: precision of the iteration, ``torch.float32`` or ``torch.bfloat16``.
        eps: added to the Frobenius norm (``"keller"``) or its floor (``"torch"``), so that G = 0
            maps to 0.
        arithmetic: ``"keller"`` or ``"torch"``, see above.

    Returns:
        (..., m, n) tensor in G's dtype.

    Raises:
        ValueError: G has fewer than 2 dims, the schedule is malformed or shorter than ``steps``, or
            ``arithmetic`` is unknown.
    """
    if G.ndim < 2:
        raise ValueError(f"`G` must have shape (..., m, n), got shape {tuple(G.shape)}.")
    if arithmetic not in ("keller", "torch"):
        raise ValueError(f"`arithmetic`={arithmetic!r} is not supported; accepted: 'keller', 'torch'.")
    schedule = _schedule(coefficients, steps)
    tall = G.size(-2) > G.size(-1)
    X = G.to(dtype)
    if tall:
        X = X.mT  # (..., n, m): keeps A = XXᵀ at min(m, n)²
    norm = X.norm(dim=(-2, -1), keepdim=True)
    if arithmetic == "keller":
        X = X / (norm + eps)  # ‖X‖₂ ≤ ‖X‖_F ≤ 1
        for a, b, c in schedule:
            A = X @ X.mT  # (..., r, r), r = min(m, n)
            B = b * A + c * A @ A  # (cA)A
            X = a * X + B @ X
        return (X.mT if tall else X).to(G.dtype)
    X = X / norm.clamp(min=eps)
    batch = X.shape[:-2]
    if X.ndim > 3:
        X = X.reshape(-1, *X.shape[-2:])
    mm = torch.addmm if X.ndim == 2 else torch.baddbmm
    for a, b, c in schedule:
        A = X @ X.mT  # (..., r, r), r = min(m, n)
        B = mm(A, A, A, beta=b, alpha=c)  # bA + cA²
        X = mm(X, B, X, beta=a)  # aX + BX
    X = X.reshape(*batch, *X.shape[-2:])
    if tall:
        X = X.mT
    return X.to(G.dtype)
