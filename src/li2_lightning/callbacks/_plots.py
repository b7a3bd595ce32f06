"""Images for the Li2 callbacks, drawn with matplotlib's object API (no pyplot, no global backend).

Building a figure (axes, ticks, text) costs more than drawing it, so each kind of figure is built
once per process and shape and only its data and title change between epochs.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

_FIGURES: dict[tuple, tuple] = {}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _render(fig, path: Optional[str]) -> np.ndarray:
    """RGB array of the figure (drawn once); also written as PNG to ``path`` if given."""
    from matplotlib.image import imsave

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        imsave(path, rgb)
    return rgb


def _heatmap_figure(labels: tuple[str, ...], K: int):
    key = ("heatmap", labels, K)
    if key not in _FIGURES:
        fig = _figure(8, 3.2)
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.16, top=0.9)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(np.zeros((len(labels), K)), aspect="auto", interpolation="nearest", cmap="viridis",
                       vmin=0, vmax=1)
        ax.set_xlabel("hidden node (sorted by dominant irrep, then purity)")
        ax.set_ylabel("irrep block")
        ticks = np.linspace(0, len(labels) - 1, min(len(labels), 6)).round().astype(int)
        ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
        ax.set_xticks(np.linspace(0, K - 1, min(K, 5)).round().astype(int))
        title = ax.set_title("", fontsize=9)
        _FIGURES[key] = (fig, im, title)
    return _FIGURES[key]


def irrep_heatmap(power: torch.Tensor, labels: Sequence[str], epoch: int, path: Optional[str] = None,
                  max_blocks: int = 64) -> np.ndarray:
    """Node × irrep heatmap of the per-node share of power in each non-trivial block.

    Nodes (x axis) are sorted by dominant block, then by decreasing purity within a block, so
    learned features show as a staircase of bright bars.

    Args:
        power: (K, 2, B) from ``features.irrep_power``.
        labels: B block labels.
        epoch: shown in the title.
        path: PNG file to write, or None.
        max_blocks: at most this many blocks (rows) are drawn.

    Returns:
        The image as an (H, W, 3) uint8 array.
    """
    pooled = power[:, :, 1:].sum(1).to(torch.float64).cpu()  # (K, B-1)
    share = pooled / pooled.sum(1, keepdim=True).clamp_min(1e-300)
    pur, dom = share.max(1)
    order = torch.from_numpy(np.lexsort((-pur.numpy(), dom.numpy())))
    img = share[order].T.numpy()[:max_blocks]  # (B-1, K)
    fig, im, title = _heatmap_figure(tuple(labels[1:][:max_blocks]), img.shape[1])
    im.set_data(img)
    title.set_text(f"share of each node's weight power per irrep block (dark 0, yellow 1), epoch {epoch}")
    return _render(fig, path)


def energy_histogram(ratio: torch.Tensor, epoch: int, path: Optional[str] = None) -> np.ndarray:
    """Histogram of the per-node energy E(w_j/‖w_j‖) / E_ref; returns the (H, W, 3) image."""
    key = ("energy",)
    if key not in _FIGURES:
        fig = _figure(5, 3)
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.17, top=0.9)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_xlabel("E(w/|w|) / E at the maximum of its own irrep")
        ax.set_ylabel("nodes")
        _FIGURES[key] = (fig, ax, ax.set_title(""), [])
    fig, ax, title, artists = _FIGURES[key]
    for a in artists:
        a.remove()
    counts, edges = np.histogram(ratio.detach().cpu().numpy(), bins=50)
    artists[:] = [ax.stairs(counts, edges, fill=True)]
    ax.relim()
    ax.autoscale_view()
    title.set_text(f"per-node energy, epoch {epoch}")
    return _render(fig, path)
