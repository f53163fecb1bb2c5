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
from cmkd.models.fewshot import FewShotModel


def plot_val_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Validation accuracy against training episodes with its 95% interval over the val episodes (clipped to
    [0, 100]); several runs are drawn as small multiples, one panel each, the other runs faint behind."""
    runs = {name: hist for name, hist in histories.items() if hist}
    cols = min(len(runs), 3) or 1
    rows = -(-len(runs) // cols) or 1
    fig = Figure(figsize=(6.4 if cols == 1 else 3.6 * cols, 4.0 if rows == 1 else 2.9 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    curves = {name: _curve(hist) for name, hist in runs.items()}
    for ax, (name, (x, y, ci)) in zip(axes, curves.items()):
        for other, (ox, oy, _) in curves.items():
            if other != name and len(runs) > 1:
                ax.plot(ox, oy, color="0.8", lw=1, zorder=1)
        line, = ax.plot(x, y, marker="o", ms=3, zorder=3, label="val accuracy")
        ax.fill_between(x, np.clip(y - ci, 0, 100), np.clip(y + ci, 0, 100), color=line.get_color(), alpha=0.2,
                        linewidth=0, zorder=2, label="95% interval (val episodes)")
        ax.set_title(name if len(runs) > 1 else (title or name), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    top = max((float(np.max(np.clip(y + ci, 0, 100))) for _, y, ci in curves.values()), default=100.0)
    axes[0].set_ylim(top=min(100.0, top + 2))
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("training episodes")
    for ax in axes[::cols]:
        ax.set_ylabel("val accuracy (%)")
    if len(runs) > 1:
        fig.suptitle(title or "validation accuracy (fixed val episodes); grey: the other runs", fontsize=10)
    fig.tight_layout()
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"), sync=False)
    return Path(path)


def _curve(hist: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.array([h["episodes"] for h in hist])
    y = np.array([100 * h["val_acc"] for h in hist])
    return x, y, np.array([100 * h.get("val_ci95", 0.0) for h in hist])


@torch.no_grad()
def plot_relations(models: dict[str, FewShotModel], data: DeviceData, episode: np.ndarray, way: int,
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
