"""The backpropagated gradient G_F and the stage observables of docs/theory.md §3, §5 and §6.

Shapes: n training rows, group order M, hidden width K. ``x`` (n, 2) holds index pairs (h1, h2),
``y`` (n,) the targets h1·h2, ``W`` (2M, K) the first layer, ``V`` (K, M) the top layer,
``F = σ(XW)`` (n, K). ``P⊥ = I − 11ᵀ/n`` centres over samples: F̃ = P⊥F, Ỹ = P⊥Y.

Everything here is a pure function of tensors. The ridge quantities (V_ridge, G_F(∞), B) are
computed in float64, because η can be many orders of magnitude below the spectrum of F̃ᵀF̃.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as nnf

from li2_lightning.functional import model as fm
from li2_lightning.functional.model import hidden, preactivation, sigma, sigma_prime  # noqa: F401 (re-exported)

#: The losses of :func:`loss_value`: the training losses and the theory's J.
LOSSES = fm.LOSSES + ("theory",)

#: The degree p of homogeneity σ(cz) = c^p σ(z) for c > 0 (None: not homogeneous).
HOMOGENEITY: dict[str, Optional[int]] = {k: a.degree for k, a in fm.ACTIVATIONS.items()}


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not supported; accepted: {list(LOSSES)}")


def one_hot(y: torch.Tensor, M: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Y (n, M): one-hot rows of the targets y (n,)."""
    return nnf.one_hot(y, M).to(dtype)


def centre(A: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """P⊥A: A (n, ·) with its column means removed (centring over samples).

    With a leading member dim, A (S, n, ·) and ``mask`` (S, n) 0/1 marking each member's real rows
    (a population pads its members' rows): each member is centred over its own rows and padded
    rows come out 0.
    """
    if mask is None:
        return A - A.mean(dim=0, keepdim=True)
    m = mask.to(A.dtype)[..., None]  # (S, n, 1)
    mean = (A * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp_min(1)
    return (A - mean) * m


def loss_value(F: torch.Tensor, V: torch.Tensor, y: torch.Tensor, loss: str = "mse",
               output_scale: float = 1.0) -> torch.Tensor:
    """The training loss of outputs O = β F V (docs/theory.md §2) as a scalar.

    - ``"mse"``: L = (1/n) Σ_i ‖(o_i − mean(o_i)) − (e_{y_i} − 1/M)‖², the class-centred squared
      error of the author's code (mean over samples, sum over classes).
    - ``"ce"``: mean cross-entropy of the logits O.
    - ``"theory"``: J = ½‖P⊥(Y − O)‖²_F, Eq. 1 without the ridge term (a sum, not a mean).

    Args:
        F: (n, K) hidden activations. V: (K, M). y: (n,) targets. output_scale: β.
    """
    _check_loss(loss)
    O = fm.readout(F, V, output_scale)  # (n, M)
    Y = one_hot(y, V.shape[1], O.dtype)
    if loss == "theory":
        return 0.5 * centre(Y - O).square().sum()
    return fm.loss_rows(loss, O, y, Y).mean()


def G_F_autograd(F: torch.Tensor, V: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                 output_scale: float = 1.0) -> torch.Tensor:
    """G_F = −∂L/∂F (n, K) by autograd, for the loss of :func:`loss_value` (docs/theory.md §3).

    The reference definition; :func:`G_F_closed_form` gives the same without a graph.
    """
    F = F.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_value(F, V.detach(), y, loss, output_scale), F)
    return -grad


def G_F_closed_form(F: torch.Tensor, V: torch.Tensor, y: torch.Tensor, loss: str = "mse",
                    output_scale: float = 1.0, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """G_F = −∂L/∂F (n, K) in closed form, for the losses of :func:`loss_value`.

    With O = βFV, C = I_M − 11ᵀ/M (centring over classes) and P⊥ (centring over samples):

    - ``"mse"``:    G_F = (2β/n) (Y − O) C Vᵀ
    - ``"ce"``:     G_F = (β/n) (Y − softmax(O)) Vᵀ
    - ``"theory"``: G_F = β P⊥(Y − O) Vᵀ, which is Eq. 2 at β = 1 (see :func:`G_F_theory`).

    With a member dim, F (S, n, K), V (S, K, M), y (S, n) and ``mask`` (S, n) marking each member's
    real rows: (S, n, K), each member's own G_F (n = its row count), 0 on padded rows.
    """
    _check_loss(loss)
    if F.dim() == 3:
        M = V.shape[-1]
        m = (torch.ones(y.shape, device=F.device) if mask is None else mask).to(F.dtype)[..., None]  # (S, n, 1)
        n = m.sum(-2, keepdim=True).clamp_min(1)  # (S, 1, 1)
        O = output_scale * (F @ V)
        Y = one_hot(y, M, O.dtype)
        if loss == "mse":
            R = Y - O
            R = (R - R.mean(dim=-1, keepdim=True)) * m
            return (2.0 * output_scale / n) * (R @ V.transpose(-2, -1))
        if loss == "ce":
            return (output_scale / n) * (((Y - torch.softmax(O, dim=-1)) * m) @ V.transpose(-2, -1))
        return output_scale * (centre(Y - O, mask) @ V.transpose(-2, -1))
    n, M = F.shape[0], V.shape[1]
    O = output_scale * (F @ V)
    Y = one_hot(y, M, O.dtype)
    if loss == "mse":
        R = Y - O
        R = R - R.mean(dim=1, keepdim=True)
        return (2.0 * output_scale / n) * (R @ V.T)
    if loss == "ce":
        return (output_scale / n) * ((Y - torch.softmax(O, dim=1)) @ V.T)
    return output_scale * (centre(Y - O) @ V.T)


def G_F_theory(F: torch.Tensor, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """G_F = −∂J/∂F = P⊥(Y − FV)Vᵀ (n, K), Eq. 2, for J = ½‖P⊥(Y − FV)‖²_F.

    Args:
        F: (n, K). V: (K, M). Y: (n, M) targets (one-hot rows, or any real targets).
    """
    return centre(Y - F @ V) @ V.T


def eta_eff(n: int, weight_decay: float, loss: str = "mse") -> Optional[float]:
    """The theory's ridge η implied by the training loss and coupled L2 weight decay (docs/theory.md §2).

    For the class-centred MSE (a mean over n samples) with coupled L2 decay ``weight_decay`` on V
    (torch Adam's ``weight_decay``), the top layer's fixed point for frozen F is
    (FᵀF + (n·wd/2) I) V = Fᵀ(Y − 1/M): η_eff = n·wd/2. For the theory loss J (a sum) η = wd.
    Cross-entropy has no quadratic fixed point: None.

    Raises:
        ValueError: on n < 1, a negative weight decay or an unknown loss.
    """
    _check_loss(loss)
    if n < 1:
        raise ValueError(f"n={n!r} is not accepted; accepted: an integer >= 1")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} is not accepted; accepted: a number >= 0")
    if loss == "mse":
        return n * weight_decay / 2.0
    if loss == "theory":
        return float(weight_decay)
    return None


def gram_centred(F: torch.Tensor) -> torch.Tensor:
    """F̃ᵀF̃ (K, K) in float64, the matrix of Lemma 1 and Theorem 6.

    The product is taken in F's dtype (pass float64 F for full precision; float32 costs half and
    its rounding, ~1e-7 of the largest entry, is far below any useful ridge η).
    """
    Fc = centre(F)
    return (Fc.T @ Fc).to(torch.float64)


def ridge_cholesky(gram: torch.Tensor, eta: float) -> torch.Tensor:
    """Lower Cholesky factor L of F̃ᵀF̃ + ηI (K, K), float64, from :func:`gram_centred` and η > 0."""
    A = gram.to(torch.float64).clone()
    A.diagonal().add_(eta)
    return torch.linalg.cholesky(A)


def ridge_inverse(F: torch.Tensor, eta: float, gram: Optional[torch.Tensor] = None) -> torch.Tensor:
    """B = (F̃ᵀF̃ + ηI)⁻¹ (K, K) in float64 (docs/theory.md §3, Theorem 6).

    Args:
        F: (n, K). eta: η ≥ 0 (with η = 0 a pseudo-inverse when F̃ is rank deficient).
        gram: optional precomputed :func:`gram_centred` (F).
    """
    A = (gram_centred(F) if gram is None else gram.to(torch.float64)).clone()
    A.diagonal().add_(eta)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_inverse(L)
    return torch.linalg.pinv(A, hermitian=True)


def V_ridge(F: torch.Tensor, Y: torch.Tensor, eta: float) -> torch.Tensor:
    """V_ridge = (F̃ᵀF̃ + ηI)⁻¹ F̃ᵀỸ (K, M), float64: the top layer's limit for frozen F (docs/theory.md §3).

    The minimiser over V of J + η‖V‖²/2 with J = ½‖P⊥(Y − FV)‖²_F.

    Args:
        F: (n, K). Y: (n, M) targets. eta: ridge η ≥ 0.
    """
    Fc, Yc = centre(F.to(torch.float64)), centre(Y.to(torch.float64))
    return ridge_inverse(F, eta) @ (Fc.T @ Yc)


def V_fixed_point(F: torch.Tensor, y: torch.Tensor, M: int, eta: float, loss: str = "mse",
                  output_scale: float = 1.0, gram: Optional[torch.Tensor] = None,
                  chol: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The top layer's fixed point (K, M), float64, for frozen F under the actual training loss.

    - ``"mse"`` with η = n·wd/2 (docs/theory.md §2): V* = β (β² FᵀF + ηI)⁻¹ Fᵀ(Y − 1/M) (F not centred:
      the class-centred MSE centres over classes, not samples).
    - ``"theory"``: V_ridge of :func:`V_ridge` (β = 1).
    - ``"ce"``: None (no closed form).

    ``gram`` may pass a precomputed F̃ᵀF̃ (:func:`gram_centred`); FᵀF = F̃ᵀF̃ + n μμᵀ then
    costs no second (K, K) product. With β = 1, ``chol`` may pass the Cholesky factor of
    F̃ᵀF̃ + ηI (:func:`ridge_cholesky`): the rank-one term is then handled by Sherman-Morrison
    and no new factorisation is made.
    """
    _check_loss(loss)
    if loss == "ce":
        return None
    if loss == "theory":
        return V_ridge(F, one_hot(y, M), eta)
    n = F.shape[0]
    S = class_sums(F, y, M).to(torch.float64)  # YᵀF (M, K)
    mu = S.sum(dim=0) / n  # column means of F
    rhs = output_scale * (S.T - n * mu[:, None] / M)  # Fᵀ(Y − 1/M) (K, M)
    if chol is not None and output_scale == 1.0 and eta > 0:
        # (A + n μμᵀ)⁻¹ r = A⁻¹r − A⁻¹μ (n μᵀA⁻¹r) / (1 + n μᵀA⁻¹μ), A = F̃ᵀF̃ + ηI = LLᵀ
        Ar = torch.cholesky_solve(rhs, chol)
        Amu = torch.cholesky_solve(mu[:, None], chol)
        return Ar - Amu @ (n * (mu[None, :] @ Ar)) / (1 + n * float(mu @ Amu[:, 0]))
    if gram is None:
        F64 = F.to(torch.float64)
        FtF = F64.T @ F64
    else:
        FtF = gram.to(torch.float64) + n * torch.outer(mu, mu)
    A = (output_scale**2) * FtF
    A.diagonal().add_(eta)
    if eta > 0:
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, L)
    return torch.linalg.lstsq(A, rhs).solution


def G_F_inf(F: torch.Tensor, Y: torch.Tensor, eta: float) -> torch.Tensor:
    """G_F(∞) = η(F̃F̃ᵀ + ηI)⁻¹ ỸỸᵀF̃ (F̃ᵀF̃ + ηI)⁻¹ = P_η ỸỸᵀF̃ B (n, K), float64 (Eq. 4).

    The gradient −∂J/∂F at V = V_ridge, for J = ½‖P⊥(Y − FV)‖²_F, evaluated as Eq. 4 is
    written (an n × n and a K × K solve). With η = 0 it is zero (the label signal vanishes).

    Args:
        F: (n, K). Y: (n, M) targets. eta: ridge η ≥ 0.
    """
    Fc, Yc = centre(F.to(torch.float64)), centre(Y.to(torch.float64))
    if eta == 0:
        return torch.zeros_like(Fc)
    A = Fc @ Fc.T
    A.diagonal().add_(eta)
    P_eta = eta * torch.linalg.inv(A)  # (n, n)
    return P_eta @ Yc @ (Yc.T @ Fc) @ ridge_inverse(F, eta)


def class_sums(A: torch.Tensor, y: torch.Tensor, M: int) -> torch.Tensor:
    """YᵀA (M, ·): the rows of A (n, ·) summed per class (an index_add, no one-hot matmul).

    With a leading member dim, A (S, n, K) and y (S, n) give (S, M, K); a label y = M marks a
    padded row, which is left out (a population's members have different row counts).
    """
    if A.dim() == 3:
        S, n, K = A.shape
        out = torch.zeros(S, M + 1, K, dtype=A.dtype, device=A.device)
        return out.scatter_add_(1, y[..., None].expand(S, n, K), A)[:, :M]
    return torch.zeros(M, A.shape[1], dtype=A.dtype, device=A.device).index_add_(0, y, A)


def class_counts(y: torch.Tensor, M: int) -> torch.Tensor:
    """n_c per class, float64: (M,) for y (n,), (S, M) for y (S, n) (label M = padding, left out)."""
    if y.dim() == 2:
        ones = torch.ones(y.shape, dtype=torch.float64, device=y.device)
        return torch.zeros(y.shape[0], M + 1, dtype=torch.float64, device=y.device).scatter_add_(1, y, ones)[:, :M]
    return torch.bincount(y, minlength=M).to(torch.float64)


def label_signal(F: torch.Tensor, y: torch.Tensor, M: int) -> torch.Tensor:
    """ỸỸᵀF̃ (n, K): the label-carrying direction of G_F in Stages I-II (docs/theory.md §3, Theorem 1)."""
    S = class_sums(centre(F), y, M)  # ỸᵀF̃ = YᵀF̃, (M, K)
    return centre(S.index_select(0, y))


def class_profile(A: torch.Tensor, y: torch.Tensor, M: int) -> torch.Tensor:
    """ỸᵀA = YᵀÃ (M, ·) in float64: per-class sums of the sample-centred rows of A (n, ·).

    One pass over A: with S = YᵀA (an index_add), 1ᵀA = Σ_c S_c, so ỸᵀA = S − n_c (Σ_c S_c)/n.
    The index_add runs in A's dtype, the rest in float64. With a member dim (A (S, n, K), y (S, n),
    label M for padded rows, see :func:`class_sums`) the result is (S, M, K), each member centred
    over its own rows.
    """
    counts = class_counts(y, M)  # (M,) or (S, M)
    S = class_sums(A, y, M).to(torch.float64)  # (M, ·) or (S, M, K)
    n = float(A.shape[0]) if A.dim() == 2 else counts.sum(-1).clamp_min(1)[:, None, None]
    return S - counts[..., None] * (S.sum(dim=-2, keepdim=True) / n)


def alignment(G_F: torch.Tensor, F: torch.Tensor, y: torch.Tensor, M: int,
              S: Optional[torch.Tensor] = None, SG: Optional[torch.Tensor] = None,
              G_norm: Optional[float] = None):
    """a_G = ⟨G_F, ỸỸᵀF̃⟩ / (‖G_F‖ ‖ỸỸᵀF̃‖) (docs/theory.md §6.1), without forming ỸỸᵀF̃.

    With S = ỸᵀF̃ (M, K) and counts n_c: ⟨G_F, ỸỸᵀF̃⟩ = ⟨ỸᵀG_F, S⟩ and
    ‖ỸỸᵀF̃‖² = Σ_c n_c‖S_c‖² − ‖Σ_c n_c S_c‖²/n, so the cost is three passes over (n, K)
    (two index_adds and a norm). Accumulated in float64.

    With a member dim (G_F, F (S, n, K), y (S, n) with label M on padded rows, whose G_F rows
    must be 0) the result is an (S,) float64 tensor, one a_G per member; ``G_norm`` then (S,).

    Args:
        G_F: (n, K). F: (n, K). y: (n,) targets. M: classes.
        S, SG: optional precomputed :func:`class_profile` of F and of G_F. G_norm: ‖G_F‖.

    Returns:
        a float, or (S,) with a member dim.
    """
    S = class_profile(F, y, M) if S is None else S  # (M, K) or (S, M, K)
    SG = class_profile(G_F, y, M) if SG is None else SG
    counts = class_counts(y, M)  # (M,) or (S, M)
    if F.dim() == 3:
        n = counts.sum(-1).clamp_min(1)  # (S,)
        inner = (SG * S).sum((-2, -1))
        sig2 = (counts[..., None] * S.square()).sum((-2, -1)) - (counts[:, None, :] @ S).square().sum((-2, -1)) / n
        g = torch.linalg.vector_norm(G_F, dim=(-2, -1)).double() if G_norm is None else G_norm
        denom = g * sig2.clamp_min(0).sqrt()
        return torch.where(denom > 0, inner / denom.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    n = F.shape[0]
    inner = (SG * S).sum()
    sig2 = (counts[:, None] * S.square()).sum() - (counts @ S).square().sum() / n
    g = float(torch.linalg.vector_norm(G_F)) if G_norm is None else G_norm
    denom = g * sig2.clamp_min(0).sqrt()
    return float(inner / denom) if denom > 0 else 0.0


def cosine(A: torch.Tensor, B: torch.Tensor) -> float:
    """⟨A, B⟩ / (‖A‖ ‖B‖) over all entries, float64; 0 when either is zero."""
    A, B = A.to(torch.float64), B.to(torch.float64)
    d = A.norm() * B.norm()
    return float((A * B).sum() / d) if d > 0 else 0.0


def relative_change(A: torch.Tensor, B: torch.Tensor) -> float:
    """‖A − B‖ / ‖B‖ (Frobenius): e.g. r_V = ‖V − V_ridge‖/‖V_ridge‖ (docs/theory.md §6.2-3).

    The difference is taken in the common dtype (exact for close float32 values, Sterbenz), the
    ratio in float64; inf when B = 0.
    """
    dtype = torch.promote_types(A.dtype, B.dtype)
    d = float(torch.linalg.vector_norm(B.to(dtype)))
    return float(torch.linalg.vector_norm(A.to(dtype) - B.to(dtype))) / d if d > 0 else float("inf")


def independence_ratio(F: torch.Tensor, nodes: Optional[torch.Tensor] = None,
                       mask: Optional[torch.Tensor] = None):
    """mean|offdiag(F̃ᵀF̃)| / mean|diag(F̃ᵀF̃)| (docs/theory.md §6.4; the paper reports ≤ 8% in Stage II).

    Args:
        F: (n, K) hidden activations, or (S, n, K) for S members with ``mask``.
        nodes: optional index tensor of a subset of nodes; the ratio is then that of the subset's
            Gram matrix, an unbiased estimate of both means at a cost of n·|nodes|² instead of n·K².
        mask: (S, n) 0/1 real rows of each member (with a member dim; see :func:`centre`).

    Returns:
        a float, or an (S,) float64 tensor with a member dim.
    """
    if F.dim() == 3:
        Fc = centre(F if nodes is None else F.index_select(-1, nodes), mask)
        G = (Fc.transpose(-2, -1) @ Fc).to(torch.float64)  # (S, k, k)
        k = G.shape[-1]
        diag = G.diagonal(dim1=-2, dim2=-1).abs()
        dmean = diag.mean(-1)
        if k < 2:
            return torch.zeros_like(dmean)
        off = (G.abs().sum((-2, -1)) - diag.sum(-1)) / (k * (k - 1))
        return torch.where(dmean > 0, off / dmean.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    Fc = centre(F if nodes is None else F.index_select(1, nodes))
    G = (Fc.T @ Fc).to(torch.float64)  # (k, k), the product in F's dtype
    k = G.shape[0]
    diag = G.diagonal().abs().mean()
    if k < 2 or diag == 0:
        return 0.0
    off = (G.abs().sum() - G.diagonal().abs().sum()) / (k * (k - 1))
    return float(off / diag)


def gram_isotropy_distance(F: torch.Tensor, rows: Optional[torch.Tensor] = None) -> float:
    """‖FFᵀ − (aI + b11ᵀ)‖_F / ‖FFᵀ‖_F for the least-squares best a, b (docs/theory.md §6.4, Lemma 1).

    The best fit has b = mean of the off-diagonal entries and a + b = mean of the diagonal. 0 means
    FFᵀ is exactly of the form Lemma 1 assumes. ``rows`` restricts to a subset of samples (the
    distance of that principal submatrix). float64.
    """
    Fs = (F if rows is None else F.index_select(0, rows)).to(torch.float64)
    G = Fs @ Fs.T  # (m, m)
    m = G.shape[0]
    d = G.diagonal()
    b = (G.sum() - d.sum()) / (m * (m - 1)) if m > 1 else torch.zeros((), dtype=G.dtype)
    a = d.mean() - b
    R = G - b
    R.diagonal().sub_(a)
    nrm = G.norm()
    return float(R.norm() / nrm) if nrm > 0 else 0.0


def repulsion(F: torch.Tensor, eta: float, n_pairs: int = 256, gram: Optional[torch.Tensor] = None,
              chol: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Theorem 6 on the ``n_pairs`` most similar node pairs (largest cosine of f̃_j, f̃_l, j < l).

    Theorem 6 writes [F̃B]_j = b_jj f̃_j + Σ_l b_jl f̃_l with B = (F̃ᵀF̃ + ηI)⁻¹ and
    sign(b_jl) = −sign(f̃_jᵀ P_{η,−jl} f̃_l), P_{η,−jl} = η(F̃_{−jl}F̃_{−jl}ᵀ + ηI)⁻¹ without
    columns j, l. By the 2×2 block inverse, f̃_jᵀ P_{η,−jl} f̃_l = −b_jl / (b_jj b_ll − b_jl²)
    exactly, so the sign statement always holds (``sign_match`` is a numerical check, ≈ 1).
    The observable is ``repulsion``: the share of these pairs with sign(b_jl) = −sign(f̃_jᵀf̃_l),
    i.e. whose coupling term pushes node j away from a node it resembles (Stage III).

    Only the entries of B among the nodes of the selected pairs are formed (one Cholesky factor
    and triangular solves), float64.

    Args:
        F: (n, K) hidden activations. eta: ridge η > 0. n_pairs: pairs to inspect.
        gram: optional precomputed :func:`gram_centred` (F). chol: optional
            :func:`ridge_cholesky` (gram, eta).

    Returns:
        ``{"repulsion": ..., "sign_match": ..., "mean_cos": ...}`` (mean cosine of the pairs).
    """
    G = gram_centred(F) if gram is None else gram.to(torch.float64)
    K = G.shape[0]
    nrm = G.diagonal().clamp_min(1e-300).sqrt()
    C = G / (nrm[:, None] * nrm[None, :])  # (K, K) cosines
    C.masked_fill_(torch.ones(K, K, dtype=torch.bool, device=G.device).tril_(), -3.0)  # keep j < l
    cos, flat = C.flatten().topk(min(n_pairs, K * (K - 1) // 2))  # pairs j < l, cosines in [-1, 1]
    j, l = flat // K, flat % K
    nodes, inv = torch.unique(torch.cat([j, l]), return_inverse=True)
    jj, ll = inv[: len(j)], inv[len(j):]
    L = ridge_cholesky(G, eta) if chol is None else chol
    E = torch.zeros(K, len(nodes), dtype=G.dtype, device=G.device)
    E[nodes, torch.arange(len(nodes), device=G.device)] = 1.0
    Z = torch.linalg.solve_triangular(L, E, upper=False)  # L⁻¹ e_node
    Bs = Z.T @ Z  # B restricted to the nodes
    b_jl = Bs[jj, ll]
    det = Bs[jj, jj] * Bs[ll, ll] - b_jl.square()
    proj = -b_jl / det  # f̃_jᵀ P_{η,−jl} f̃_l
    return {
        "repulsion": float((torch.sign(b_jl) == -torch.sign(cos)).double().mean()),
        "sign_match": float((torch.sign(b_jl) == -torch.sign(proj)).double().mean()),
        "mean_cos": float(cos.mean()),
    }


def uncovered_share(G_F: torch.Tensor, y: torch.Tensor, Q: torch.Tensor, block_index: torch.Tensor,
                    covered: torch.Tensor, trivial: int = 0, SG: Optional[torch.Tensor] = None) -> float:
    """Share of G_F's class profile on irrep blocks not yet covered (Theorem 7, docs/theory.md §6.7).

    The class profile is ỸᵀG_F (M, K): for each node, G_F summed over the samples of each class
    h1·h2, a function on the group. Theorem 7: once a set S of irreps is learned, the residual and
    so G_F lose their power on S. Returned: Σ_{k∉S} ‖Π_k ỸᵀG_F‖² / Σ_k ‖Π_k ỸᵀG_F‖² over the
    non-trivial blocks k (power summed over nodes), with Π_k = Q_k Q_kᵀ the block projectors of
    :func:`li2_lightning.analysis.irreps.real_blocks`; 0 when every block is covered. A G_F with
    no preference gives about (real dimension of the uncovered blocks) / (M − 1).

    Args:
        G_F: (n, K). y: (n,) targets. Q: (M, M) orthonormal real irrep basis (columns grouped by
            block). block_index: (M,) block of each column of Q. covered: (B,) bool, blocks held
            by pure nodes. trivial: index of the trivial block, left out. SG: optional precomputed
            :func:`class_profile` (G_F, y, M).
    """
    M = Q.shape[0]
    prof = class_profile(G_F, y, M) if SG is None else SG  # (M, K) = ỸᵀG_F
    coef2 = (Q.to(torch.float64).T @ prof).square().sum(dim=1)  # (M,) power per basis column
    power = torch.zeros(covered.shape[0], dtype=torch.float64).index_add_(0, block_index, coef2)
    keep = torch.ones_like(covered, dtype=torch.bool)
    keep[trivial] = False
    total = power[keep].sum()
    if total <= 0:
        return 0.0
    return float(power[keep & ~covered.to(torch.bool)].sum() / total)
