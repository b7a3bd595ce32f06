"""The paper's network: Ŷ = β σ(XW) V, no biases (docs/theory.md §1), and its variants (§10).

The math lives in :mod:`li2_lightning.functional.model`; this module holds the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from li2_lightning.functional import model as fm
from li2_lightning.functional.model import check_M_K

__all__ = ["ACTIVATIONS", "TOP_LAYERS", "NetSpec", "TwoLayerNet", "activation_fn", "check_M_K", "check_variant"]

#: How the top layer V is set: trained, or the ridge solution of the current features (§10).
TOP_LAYERS = ("learned", "ridge")

#: σ by name (the functional registry's, without derivatives).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {k: a.sigma for k, a in fm.ACTIVATIONS.items()}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise activation σ called ``name``.

    Raises:
        ValueError: if ``name`` is not one of ``ACTIVATIONS``.
    """
    return fm.check_activation(name).sigma


@dataclass(frozen=True)
class NetSpec:
    """The network's settings that every net of a run (or every member of a population) shares.

    One validation of the variant settings of docs/theory.md §10, at construction. The init scale
    of V is not here: a population's members each have their own.

    Args:
        activation: ``"sqr"`` (x², default), ``"relu"``, ``"silu"`` or ``"relusqr"``.
        output_scale: the output multiplier β in Ŷ = β F V.
        hidden_layers: L ≥ 1 hidden layers; layers 2..L are K×K, bias-free.
        residual: layers 2..L compute σ(F + F U) instead of σ(F U).
        complex_weights: complex W, U and V (needs an activation defined on complex numbers).
        top_layer: ``"learned"`` (V trained) or ``"ridge"`` (V the ridge solution of the features).
        ridge_lambda: the ridge η of the ``"ridge"`` top layer.

    Raises:
        ValueError: naming the setting: an unknown activation, ``hidden_layers`` < 1, complex
            weights with a σ not defined on complex numbers, an unknown ``top_layer``, a ridge top
            layer with a negative ``ridge_lambda``.
    """

    activation: str = "sqr"
    output_scale: float = 1.0
    hidden_layers: int = 1
    residual: bool = False
    complex_weights: bool = False
    top_layer: str = "learned"
    ridge_lambda: float = 1e-3

    def __post_init__(self) -> None:
        fm.check_activation(self.activation)
        fm.check_hidden_layers(self.hidden_layers)
        if self.complex_weights:
            fm.check_complex(self.activation)
        if self.top_layer not in TOP_LAYERS:
            raise ValueError(f"top_layer={self.top_layer!r} is not supported; accepted: {list(TOP_LAYERS)}")
        if self.top_layer == "ridge" and (not isinstance(self.ridge_lambda, (int, float)) or self.ridge_lambda < 0):
            raise ValueError(f"ridge_lambda={self.ridge_lambda!r} is not accepted; accepted: a number >= 0")

    def check_loss(self, loss: str) -> "NetSpec":
        """Refuse a loss this net cannot be trained with (a ridge top layer needs ``"mse"``); returns self.

        Raises:
            ValueError: on a ridge top layer with a loss other than ``"mse"``.
        """
        if self.top_layer == "ridge" and loss != "mse":
            raise ValueError(f"top_layer='ridge' with loss={loss!r}: the ridge top layer is the closed-form "
                             "minimiser of the squared error; accepted: loss='mse'")
        return self


def check_variant(activation: str, hidden_layers: int = 1, complex_weights: bool = False,
                  top_layer: str = "learned", ridge_lambda: float = 1e-3, loss: str = "mse") -> None:
    """Validate the model variant settings of docs/theory.md §10 (user input): :class:`NetSpec`'s
    validation and :meth:`NetSpec.check_loss`.

    Raises:
        ValueError: as :class:`NetSpec` and :meth:`NetSpec.check_loss`.
    """
    NetSpec(activation, hidden_layers=hidden_layers, complex_weights=complex_weights, top_layer=top_layer,
            ridge_lambda=ridge_lambda).check_loss(loss)


class TwoLayerNet(nn.Module):
    """The paper's network on pairs of group elements: two layers by default, deeper on request.

    The input X (n × 2M) is the one-hot of h1 next to the one-hot of h2, so XW is two row gathers
    of W added (docs/theory.md §1); :meth:`hidden` takes the index pairs directly and never builds X.

    Args:
        M: group order (input is 2M wide, output M wide).
        K: hidden width.
        activation: ``"sqr"`` (x², default), ``"relu"``, ``"silu"`` or ``"relusqr"``.
        V_init_scale: multiplier on V's initial values; 0 gives the paper's zero-init V.
        output_scale: the output multiplier β in Ŷ = β F V.
        hidden_layers: L ≥ 1 hidden layers; layers 2..L are K×K, bias-free (``U[0]`` is layer 2).
        residual: layers 2..L compute σ(F + F U) instead of σ(F U).
        complex_weights: complex W, U and V; the output is Re(β F V) (needs ``activation="sqr"``).
        top_layer: ``"learned"`` (V trained) or ``"ridge"`` (V set by :meth:`fit_top_layer_` to the
            ridge solution of the current features at every training forward; not trained).
        ridge_lambda: the ridge η of the ``"ridge"`` top layer.

    Parameters ``W`` (2M × K, column j is node j) and ``V`` (K × M) are initialised as
    ``nn.Linear`` would: uniform in ±1/√fan_in, drawn from the global RNG, W first; then
    U_2..U_L (±1/√K each), so L = 1 draws exactly the two-layer numbers. With complex weights the
    real parts are those numbers and the imaginary parts are drawn after them in the same order
    and bounds (the author's code casts a real init to complex; an all-real point gets zero
    gradient in every imaginary part, so that net would never leave the real one, §10).
    """

    def __init__(
        self,
        M: int,
        K: int,
        activation: str = "sqr",
        V_init_scale: float = 1.0,
        output_scale: float = 1.0,
        hidden_layers: int = 1,
        residual: bool = False,
        complex_weights: bool = False,
        top_layer: str = "learned",
        ridge_lambda: float = 1e-3,
    ) -> None:
        super().__init__()
        check_M_K(M, K)
        self.spec = NetSpec(activation, output_scale, hidden_layers, residual, complex_weights, top_layer, ridge_lambda)
        self.sigma = activation_fn(activation)
        self.M, self.K, self.activation = M, K, activation
        self.output_scale = float(output_scale)
        self.hidden_layers, self.residual = hidden_layers, bool(residual)
        self.complex_weights, self.top_layer, self.ridge_lambda = bool(complex_weights), top_layer, float(ridge_lambda)
        W, V = torch.empty(2 * M, K), torch.empty(K, M)
        Us = [torch.empty(K, K) for _ in range(hidden_layers - 1)]
        bound_W, bound_V, bound_U = 1 / math.sqrt(2 * M), 1 / math.sqrt(K), 1 / math.sqrt(K)
        W.uniform_(-bound_W, bound_W)
        V.uniform_(-bound_V, bound_V).mul_(V_init_scale)
        for U in Us:
            U.uniform_(-bound_U, bound_U)
        if complex_weights:
            W, V = torch.complex(W, torch.empty_like(W).uniform_(-bound_W, bound_W)), torch.complex(
                V, torch.empty_like(V).uniform_(-bound_V, bound_V).mul_(V_init_scale))
            Us = [torch.complex(U, torch.empty_like(U).uniform_(-bound_U, bound_U)) for U in Us]
        self.W = nn.Parameter(W)
        self.V = nn.Parameter(V, requires_grad=top_layer == "learned")
        self.U = nn.ParameterList([nn.Parameter(U) for U in Us])

    @classmethod
    def from_spec(cls, M: int, K: int, spec: NetSpec, V_init_scale: float = 1.0) -> "TwoLayerNet":
        """The net of ``spec`` on group order M with width K, V's init scaled by ``V_init_scale``."""
        return cls(M, K, spec.activation, V_init_scale, spec.output_scale, spec.hidden_layers, spec.residual,
                   spec.complex_weights, spec.top_layer, spec.ridge_lambda)

    def layer_weights(self) -> list[torch.Tensor]:
        """[W, U_2, ..., U_L, V]: every layer's weight, bottom to top."""
        return [self.W, *self.U, self.V]

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """XW for index pairs x (n, 2) -> (n, K), as W[h1] + W[M + h2]."""
        return fm.preactivation(self.W, x)

    def hidden_stack(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[F_1, ..., F_L] for index pairs x (n, 2), each (n, K) (:func:`~li2_lightning.functional.model.hidden_stack`)."""
        return fm.hidden_stack(self.W, x, self.activation, list(self.U), self.residual)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """F = the top hidden layer's activations for index pairs x (n, 2) -> (n, K); σ(XW) when L = 1."""
        if not len(self.U) and not self.complex_weights:
            return self.sigma(fm.preactivation(self.W, x))
        return fm.hidden(self.W, x, self.activation, list(self.U), self.residual)

    @torch.no_grad()
    def fit_top_layer_(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set V to the ridge solution of the current top features on (x, y) (``top_layer="ridge"``).

        :func:`li2_lightning.analysis.layers.ridge_readout`: the closed-form minimiser of the
        class-centred squared error plus η‖V‖² for frozen features, computed in float64.
        """
        from li2_lightning.analysis.layers import ridge_readout

        F = self.hidden(x)
        self.V.copy_(ridge_readout(F, y, self.M, self.ridge_lambda, self.output_scale).to(self.V.dtype))

    def readout(self, F: torch.Tensor) -> torch.Tensor:
        """Ŷ = β F V for hidden activations F (n, K) -> (n, M)."""
        return fm.readout(F, self.V, self.output_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, M) for index pairs x (n, 2)."""
        return self.readout(self.hidden(x))
