"""The net's math as pure functions: Ŷ = β σ(XW) V and its variants (docs/theory.md §1, §2, §10).

Shapes: group order M, hidden width K, n rows. One net has W (2M, K), V (K, M) and index pairs
x (n, 2) holding (h1, h2); S nets at once (a population) have W (S, 2M, K), V (S, K, M) and
x (S, n, 2), and every result gains the same leading S. X, the one-hot of h1 beside the one-hot
of h2, is never built: XW is the gather W[h1] + W[M + h2].

Variants (docs/theory.md §10): ``U`` is a sequence of K×K matrices (layers 2..L, each (K, K) or
(S, K, K)), applied as F ← σ(F U), or F ← σ(F + F U) with ``residual``; complex W, U, V give a
complex F and the real part of F V as the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch.nn import functional as nnf

Elementwise = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activation:
    """An elementwise σ with its derivative σ' and degree p of homogeneity.

    ``degree`` is p with σ(cz) = c^p σ(z) for c > 0, or None when σ is not homogeneous.
    """

    sigma: Elementwise
    sigma_prime: Elementwise
    degree: Optional[int]


def _silu_prime(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


#: The activations by name; ``sqr`` (z²) is the theory's choice.
ACTIVATIONS: dict[str, Activation] = {
    "sqr": Activation(lambda z: z * z, lambda z: 2 * z, 2),
    "relu": Activation(torch.relu, lambda z: (z > 0).to(z.dtype), 1),
    "silu": Activation(nnf.silu, _silu_prime, None),
    "relusqr": Activation(lambda z: torch.relu(z).square(), lambda z: 2 * torch.relu(z), 2),
}

#: The training losses: class-centred squared error and cross-entropy.
LOSSES = ("mse", "ce")


def check_activation(name: str) -> Activation:
    """The activation called ``name``.

    Raises:
        ValueError: if ``name`` is not one of ``ACTIVATIONS``.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not supported; accepted: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_loss(name: str) -> None:
    """Raise ValueError unless ``name`` is one of ``LOSSES``."""
    if name not in LOSSES:
        raise ValueError(f"loss={name!r} is not supported; accepted: {list(LOSSES)}")


def check_M_K(M: int, K: int) -> None:
    """Validate the group order M and hidden width K (user input)."""
    if not isinstance(M, int) or M < 2:
        raise ValueError(f"M={M!r} is not a valid group order; accepted: an integer >= 2")
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K={K!r} is not a valid hidden width; accepted: an integer >= 1")


#: Activations defined on complex numbers (holomorphic polynomials); ReLU and SiLU are not.
COMPLEX_ACTIVATIONS = ("sqr",)


def check_complex(activation: str) -> None:
    """Raise ValueError unless ``activation`` can take complex preactivations (complex weights)."""
    if activation not in COMPLEX_ACTIVATIONS:
        raise ValueError(f"complex_weights=True with activation={activation!r}: σ must be defined on complex "
                         f"numbers (ReLU, SiLU and ReLU² need an order on them); accepted: {list(COMPLEX_ACTIVATIONS)}")


def check_hidden_layers(hidden_layers: int) -> None:
    """Validate the number L of hidden layers (user input): 1 is the two-layer net."""
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, int) or hidden_layers < 1:
        raise ValueError(f"hidden_layers={hidden_layers!r} is not accepted; accepted: an integer >= 1 "
                         "(1: the paper's two-layer net)")


def sigma(z: torch.Tensor, activation: str) -> torch.Tensor:
    """σ(z) elementwise."""
    return check_activation(activation).sigma(z)


def sigma_prime(z: torch.Tensor, activation: str) -> torch.Tensor:
    """σ'(z) elementwise, the derivative of :func:`sigma`."""
    return check_activation(activation).sigma_prime(z)


def member_rows(x: torch.Tensor, M: int) -> torch.Tensor:
    """Rows of a member stack W (S, 2M, K), flattened to (S·2M, K), that member s's pairs pick.

    Args:
        x: (S, n, 2) index pairs (h1, h2).

    Returns:
        (S·n, 2) long: s·2M + h1 and s·2M + M + h2.
    """
    S = x.shape[0]
    shift = torch.tensor([0, M], device=x.device) + (torch.arange(S, device=x.device) * 2 * M)[:, None, None]
    return (x + shift).reshape(-1, 2)


def preactivation(W: torch.Tensor, x: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """XW as the gather W[h1] + W[M + h2] (docs/theory.md §1).

    Args:
        W: (2M, K) or (S, 2M, K).
        x: (n, 2) index pairs, or (S, n, 2) with W (S, 2M, K) (member s's rows index W[s]).
        rows: optional :func:`member_rows` of x, precomputed (a population's fixed rows): the
            offsets then cost nothing per call (~10% of the gather's forward and backward).

    Returns:
        (n, K) or (S, n, K).
    """
    if W.is_complex():  # gather the (real, imaginary) pairs; embedding_bag takes no complex tensors
        Wr = torch.view_as_real(W)  # (..., 2M, K, 2)
        Z = preactivation(Wr.flatten(-2), x, rows)  # (..., n, 2K)
        return torch.view_as_complex(Z.unflatten(-1, (W.shape[-1], 2)).contiguous())
    M2, K = W.shape[-2:]
    if W.dim() == 2:
        # index_select's backward is an index_add, cheaper than advanced indexing's index_put
        return W.index_select(0, x[:, 0]) + W.index_select(0, x[:, 1] + M2 // 2)
    if rows is None:
        rows = member_rows(x, M2 // 2)
    # one fused gather-and-add: measured 10-30% faster than two index_selects for a population
    Z = nnf.embedding_bag(rows, W.reshape(-1, K), mode="sum")  # (S·n, K)
    return Z.view(*x.shape[:2], K)


def layer(F: torch.Tensor, U: torch.Tensor, activation: str, residual: bool = False) -> torch.Tensor:
    """One K×K hidden layer: σ(F U), or σ(F + F U) with ``residual`` (docs/theory.md §10).

    Row convention as W's: column j of U feeds node j, so x ← σ(x + U x) of the author's code on
    a column vector x is F ← σ(F + F U) on the rows F (n, K) (U (K, K); with S, F (S, n, K) and
    U (S, K, K)).
    """
    Z = F @ U
    return sigma(F + Z if residual else Z, activation)


def hidden_stack(W: torch.Tensor, x: torch.Tensor, activation: str, U: Sequence[torch.Tensor] = (),
                 residual: bool = False, rows: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Every hidden layer's activations [F_1, ..., F_L], F_1 = σ(XW), F_l = :func:`layer` (F_{l-1}, U_l).

    Args:
        W: (2M, K) or (S, 2M, K). x, rows: as for :func:`preactivation`.
        U: L − 1 matrices (K, K) or (S, K, K), layers 2..L (empty: the two-layer net).
        residual: F_l = σ(F_{l-1} + F_{l-1} U_l).

    Returns:
        L tensors (n, K) or (S, n, K).
    """
    Fs = [sigma(preactivation(W, x, rows), activation)]
    for U_l in U:
        Fs.append(layer(Fs[-1], U_l, activation, residual))
    return Fs


def hidden(W: torch.Tensor, x: torch.Tensor, activation: str, U: Sequence[torch.Tensor] = (),
           residual: bool = False, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F = the top hidden layer's activations, σ(XW) for the two-layer net: (n, K) or (S, n, K)."""
    F = sigma(preactivation(W, x, rows), activation)
    for U_l in U:
        F = layer(F, U_l, activation, residual)
    return F


def readout(F: torch.Tensor, V: torch.Tensor, output_scale: float = 1.0) -> torch.Tensor:
    """Ŷ = β F V: F (n, K) and V (K, M), or F (S, n, K) and V (S, K, M), to (n, M) or (S, n, M).

    Complex F and V give the real part, Re(β F V): the author's code trains and predicts on it.
    """
    out = F @ V
    if out.is_complex():
        out = out.real
    return out if output_scale == 1.0 else out * output_scale


def forward(W: torch.Tensor, V: torch.Tensor, x: torch.Tensor, activation: str,
            output_scale: float = 1.0, rows: Optional[torch.Tensor] = None,
            U: Sequence[torch.Tensor] = (), residual: bool = False) -> torch.Tensor:
    """Outputs Ŷ = β F_L V: (n, M) or (S, n, M); ``rows`` as for :func:`preactivation`, ``U`` and
    ``residual`` as for :func:`hidden_stack`."""
    return readout(hidden(W, x, activation, U, residual, rows), V, output_scale)


def loss_rows(name: str, out: torch.Tensor, y: torch.Tensor,
              Y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss ``name`` of each row (docs/theory.md §2), so that padded rows can be masked.

    - ``"mse"``: ‖(o_i − mean(o_i)) − (e_{y_i} − 1/M)‖², the author's class-centred squared error.
    - ``"ce"``: −log softmax(o_i)_{y_i}.

    Args:
        name: ``"mse"`` or ``"ce"``.
        out: (..., M) outputs.
        y: (...) class indices.
        Y: optional one-hot of y (..., M) in out's dtype, to skip building it (``"mse"`` only).

    Returns:
        (...) per-row losses.
    """
    check_loss(name)
    M = out.shape[-1]
    if name == "ce":
        return nnf.cross_entropy(out.reshape(-1, M), y.reshape(-1), reduction="none").view(y.shape)
    resid = out - out.mean(dim=-1, keepdim=True) + 1.0 / M  # (..., M)
    resid = resid - (nnf.one_hot(y, M).to(out.dtype) if Y is None else Y)
    return resid.square().sum(-1)


def loss_sum(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss ``name`` summed over all rows (callers divide by the batch's global size)."""
    if name == "ce":
        return nnf.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
    return loss_rows(name, out, y).sum()
