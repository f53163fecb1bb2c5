"""Figures for reports: validation curves and relation matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cmkd.data.device import DeviceData  # noqa: E402
from cmkd.eval.evaluate import embed_indices  # noqa: E402
from cmkd.losses.srl import normalised_distances  # noqa: E402


def plot_val_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Validation accuracy against training episodes, one line per run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, hist in histories.items():
        if hist:
            ax.plot([h["episodes"] for h in hist], [100 * h["val_acc"] for h in hist], marker="o", ms=3,
                    label=name)
    ax.set_xlabel("training episodes")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "validation accuracy (fixed val episodes)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def plot_relations(models: dict[str, torch.nn.Module], data: DeviceData, episode: np.ndarray, way: int,
                   shot: int, path: str | Path, tau: float = 1.0, title: str = "") -> Path:
    """For one episode: each model's query-to-class relation distribution (top row) and its
    scale-free distance matrix over all samples (bottom row), side by side."""
    n = len(models)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.4), squeeze=False)
    for col, (name, model) in enumerate(models.items()):
        emb = embed_indices(model, data, episode)
        scores = model.scores(emb.unsqueeze(0), way, shot)[0]
        probs = torch.softmax(scores / tau, -1).cpu().numpy()
        dist = normalised_distances(emb).cpu().numpy()
        axes[0, col].imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        axes[0, col].set_title(name, fontsize=10)
        axes[0, col].set_xlabel("class")
        axes[0, col].set_ylabel("query (grouped by true class)")
        axes[1, col].imshow(dist, cmap="magma_r")
        axes[1, col].set_xlabel("sample (support, then query)")
        axes[1, col].set_ylabel("sample")
    axes[0, 0].annotate("p(class | query)", (0, 1.12), xycoords="axes fraction", fontsize=9)
    axes[1, 0].annotate("pairwise distance / mean", (0, 1.03), xycoords="axes fraction", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
