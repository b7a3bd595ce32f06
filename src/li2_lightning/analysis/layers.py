"""Per-layer observables of deeper, complex and ridge-topped nets (docs/theory.md §10).

Shapes: n training rows, group order M, width K, L hidden layers. ``x`` (n, 2) holds index pairs,
``y`` (n,) the targets; ``W`` (2M, K), ``U`` L − 1 matrices (K, K), ``V`` (K, M); F_l (n, K) is
hidden layer l's output and G_l = −∂L/∂F_l its backpropagated gradient, G_F's role for layer l.

- :func:`ridge_readout`: the top layer V of ``top_layer="ridge"``, via the one ridge
  implementation (:func:`li2_lightning.analysis.gradients.V_fixed_point`).
- :func:`layer_gradients`: [F_l] and [G_l] by autograd through the functional forward.
- :func:`layer_alignment`: a_l = cos(G_l, ỸỸᵀF̃_l), the alignment of G_l with the label-signal
  prediction for layer l (the paper's Eq. 11, D̃ỸỸᵀD̃F_l, with D̃ taken as the sample centring P⊥).
- :func:`profile_power` / :func:`profile_purity` / :func:`profile_coverage`: the feature measure of
  any layer: the class profile ỸᵀF_l (how each node's mean output depends on the class h1·h2)
  decomposed into irrep blocks.
- :func:`onset_epoch`: the first epoch a layer's measure has risen by a given gain (leaving the
  lazy stage), to check the paper's bottom-up order.

Complex tensors are measured through their real representation: a complex (n, K) matrix A is
read as the real (n, 2K) matrix [Re A, Im A]. Everything returned is float64 or a Python float.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from li2_lightning.analysis import gradients as gr
from li2_lightning.analysis.features import block_power
from li2_lightning.analysis.irreps import RealIrrepBasis
from li2_lightning.functional import model as fm

__all__ = ["as_real", "ridge_readout", "layer_gradients", "layer_alignment", "profile_power", "profile_purity",
           "profile_coverage", "onset_epoch"]


def as_real(A: torch.Tensor) -> torch.Tensor:
    """[Re A, Im A] along the last dim for complex A (…, K) -> (…, 2K); a real A unchanged."""
    return torch.cat([A.real, A.imag], dim=-1) if A.is_complex() else A


def ridge_readout(F: torch.Tensor, y: torch.Tensor, M: int, eta: float, output_scale: float = 1.0) -> torch.Tensor:
    """The ridge top layer V (K, M) for frozen top features F (n, K): the minimiser of the
    class-centred squared error (docs/theory.md §2) plus η‖V‖², in float64.

    Real F: V* = β(β²FᵀF + ηI)⁻¹Fᵀ(Y − 1/M), :func:`~li2_lightning.analysis.gradients.V_fixed_point`
    (the author's ``set_weight_reg``). Complex F: the output Re(F V) = [Re F, −Im F] [Re V; Im V]
    is real-linear in (Re V, Im V) and η‖V‖² = η(‖Re V‖² + ‖Im V‖²), so the same solve on the
    stacked (n, 2K) features gives the exact minimiser; returned as a complex (K, M).

    Args:
        F: (n, K) real or complex. y: (n,) targets. M: classes. eta: η ≥ 0. output_scale: β.
    """
    if not F.is_complex():
        return gr.V_fixed_point(F.detach(), y, M, eta, "mse", output_scale)
    K = F.shape[1]
    G = torch.cat([F.real, -F.imag], dim=1).detach()  # (n, 2K)
    Vs = gr.V_fixed_point(G, y, M, eta, "mse", output_scale)  # (2K, M)
    return torch.complex(Vs[:K], Vs[K:])


def layer_gradients(W: torch.Tensor, U: Sequence[torch.Tensor], V: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    activation: str, residual: bool = False, loss: str = "mse",
                    output_scale: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Hidden activations [F_1..F_L] and backpropagated gradients [G_1..G_L], G_l = −∂L/∂F_l.

    L is the mean training loss of :func:`~li2_lightning.functional.model.loss_rows` on (x, y). For
    complex F_l, G_l is torch's complex gradient, ∂L/∂Re F_l + i ∂L/∂Im F_l (negated), so
    :func:`as_real` (G_l) is the real gradient with respect to :func:`as_real` (F_l).

    Returns:
        Two lists of L tensors (n, K), detached, in the parameters' dtype.
    """
    W, V = W.detach(), V.detach()
    U = [u.detach() for u in U]
    with torch.enable_grad():
        F1 = fm.sigma(fm.preactivation(W, x), activation).requires_grad_(True)
        Fs = [F1]
        for U_l in U:
            Fs.append(fm.layer(Fs[-1], U_l, activation, residual))
        for F in Fs[1:]:
            F.retain_grad()
        out = fm.readout(Fs[-1], V, output_scale)
        fm.loss_rows(loss, out, y).mean().backward()
    return [F.detach() for F in Fs], [-F.grad.detach() for F in Fs]


def layer_alignment(G: torch.Tensor, F: torch.Tensor, y: torch.Tensor, M: int) -> float:
    """a_l = ⟨G_l, ỸỸᵀF̃_l⟩ / (‖G_l‖ ‖ỸỸᵀF̃_l‖) (docs/theory.md §6.1 for layer l; §10).

    In the lazy and independent stages the gradient reaching layer l is the label signal on its
    own features, ỸỸᵀF̃_l (the paper's Eq. 11, with D̃ the sample centring P⊥); a_l near 1 means
    layer l learns features as the two-layer net's first layer does. Complex inputs through
    :func:`as_real`. Computed by :func:`~li2_lightning.analysis.gradients.alignment`.
    """
    return gr.alignment(as_real(G), as_real(F), y, M)


def profile_power(F: torch.Tensor, y: torch.Tensor, basis: RealIrrepBasis) -> torch.Tensor:
    """Power of each node's class profile ỸᵀF̃ in each irrep block: (K', B) float64.

    The class profile of node j is the function c ↦ Σ_{i: y_i = c} f̃_ij on the group (M values);
    a node whose output depends on the class through one irrep has all its power in that block.
    Complex F through :func:`as_real` (K' = 2K), else K' = K.

    Args:
        F: (n, K) activations of one layer. y: (n,) targets. basis: the group's irrep basis (B blocks).
    """
    prof = gr.class_profile(as_real(F), y, basis.M)  # (M, K')
    return block_power(prof, basis).T  # (K', B)


def profile_purity(power: torch.Tensor) -> torch.Tensor:
    """Share of each node's non-trivial profile power in its dominant block, (K',) in [0, 1]; 0 for no power."""
    p = power[:, 1:]
    total = p.sum(1)
    return torch.where(total > 0, p.max(1).values / total.clamp_min(1e-300), torch.zeros_like(total))


def profile_coverage(power: torch.Tensor, purity_threshold: float = 0.9) -> float:
    """Distinct non-trivial blocks that are the dominant block of a node with purity ≥ threshold,
    over the number of non-trivial blocks."""
    B = power.shape[1]
    if B < 2:
        return 0.0
    pure = profile_purity(power) >= purity_threshold
    dominant = power[:, 1:].argmax(1)
    return len(torch.unique(dominant[pure])) / (B - 1)


def onset_epoch(epochs: Sequence[float], values: Sequence[float], gain: float) -> Optional[int]:
    """The first epoch whose value exceeds the first one by at least ``gain``; None if none does.

    Applied per layer to its feature measure (purity): the epoch the layer leaves the lazy stage.
    """
    if not values:
        return None
    v0 = values[0]
    for e, v in zip(epochs, values):
        if v - v0 >= gain:
            return int(e)
    return None
