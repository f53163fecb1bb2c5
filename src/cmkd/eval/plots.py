"""Figures for reports: validation curves and relation matrices.

Figures are drawn with matplotlib's object API (``Figure`` + ``savefig``), which needs no backend:
importing cmkd never changes the caller's matplotlib backend (a notebook keeps its inline plots).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from cmkd.data.device import DeviceData
from cmkd.eval.evaluate import embed_indices
from cmkd.files import write_atomic
from cmkd.losses.srl import normalised_distances, standardise


def plot_val_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Validation accuracy against training episodes, one line per run, with its 95% interval as a band."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    for name, hist in histories.items():
        if not hist:
            continue
        x = np.array([h["episodes"] for h in hist])
        y = np.array([100 * h["val_acc"] for h in hist])
        ci = np.array([100 * h.get("val_ci95", 0.0) for h in hist])
        line, = ax.plot(x, y, marker="o", ms=3, label=name)
        ax.fill_between(x, y - ci, y + ci, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("training episodes")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "validation accuracy (fixed val episodes)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"), sync=False)
    return Path(path)


@torch.no_grad()
def plot_relations(models: dict[str, torch.nn.Module], data: DeviceData, episode: np.ndarray, way: int,
                   shot: int, path: str | Path, tau: float = 1.0, title: str = "", standardised: str = "none") -> Path:
    """For one episode, each model side by side: its relation distribution p(class | query) at the
    temperature ``tau``, of scores standardised as the SRL compares them (top row), and its pairwise
    distances over all samples divided by their mean
    (bottom row; a line separates support from queries). Each row shares one colour scale."""
    n = len(models)
    fig = Figure(figsize=(3.1 * n + 0.8, 6.4))
    axes = fig.subplots(2, n, squeeze=False)
    n_support = way * shot
    dists, probs = {}, {}
    for name, model in models.items():
        emb = embed_indices(model, data, episode)
        scores = model.scores(emb.unsqueeze(0), way, shot)[0]
        if standardised != "none":
            scores = standardise(scores, standardised)
        probs[name] = torch.softmax(scores / tau, -1).cpu().numpy()
        dists[name] = normalised_distances(emb).cpu().numpy()
    top = max(float(d.max()) for d in dists.values())
    for col, name in enumerate(models):
        im_p = axes[0, col].imshow(probs[name], aspect="auto", cmap="viridis", vmin=0, vmax=1,
                                   interpolation="nearest")
        axes[0, col].set_title(name, fontsize=10)
        axes[0, col].set_xlabel("class")
        axes[0, col].set_xticks(range(way))
        axes[0, col].set_ylabel("query (grouped by true class)" if col == 0 else "")
        im_d = axes[1, col].imshow(dists[name], cmap="magma_r", vmin=0, vmax=top, interpolation="nearest")
        for line in (axes[1, col].axhline, axes[1, col].axvline):
            line(n_support - 0.5, color="deepskyblue", lw=1.0)
        axes[1, col].set_xlabel(f"sample ({n_support} support | queries)")
        axes[1, col].set_ylabel("sample" if col == 0 else "")
    fig.colorbar(im_p, ax=axes[0, :].tolist(), fraction=0.025, pad=0.02, label=f"p(class | query), tau={tau:g}")
    fig.colorbar(im_d, ax=axes[1, :].tolist(), fraction=0.025, pad=0.02, label="distance / mean distance")
    if title:
        fig.suptitle(title, fontsize=11)
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"), sync=False)
    return Path(path)
