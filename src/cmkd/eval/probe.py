"""Will my captions help? What the text adds to the image, and how much of it the image can carry.

Cross-modal distillation can only move into an image student what the teacher's text knows *and* the
image can show: the decisive features the two modalities share (Xue et al., "The Modality Focusing
Hypothesis", ICLR 2023). :func:`probe` reads both from three models trained on the same data, an
image model, a text model and an image+text model (``cmkd probe`` trains them):

- **what the text adds**: the image+text model against the image model, paired on the same episodes;
- **what the image carries**: a linear map from the image model's embeddings to the text model's,
  fitted on base samples (ridge regression, its strength chosen on held-out base classes), then the
  text model's head scoring the *predicted* text embeddings of unseen classes. The share of the text
  model's accuracy above chance that survives the map is the share of its knowledge the image predicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.eval.evaluate import Embedded, accuracy_per_episode, embed_indices, episode_list
from cmkd.eval.stats import mean_ci
from cmkd.models.fewshot import FewShotModel

PARTS = ("image", "text", "image+text")
#: ridge strengths tried, as multiples of the mean eigenvalue of the image embeddings' covariance
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


class LinearMap:
    """``y ~ (x - x_mean) @ weight + y_mean``, fitted by ridge regression."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, strength: float) -> None:
        x, y = x.double(), y.double()
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        xc = x - self.x_mean
        gram = xc.T @ xc / len(x)
        scale = float(gram.diagonal().mean()) or 1.0
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        self.weight = torch.linalg.solve(gram + strength * scale * eye, xc.T @ (y - self.y_mean) / len(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.x_mean) @ self.weight + self.y_mean).float()


def r_squared(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Share of the target's variance (summed over dimensions) that the prediction explains."""
    residual = (target - predicted).double().pow(2).sum()
    total = (target - target.mean(0)).double().pow(2).sum()
    return float(1 - residual / total) if total > 0 else 0.0


def fit_image_to_text(x: torch.Tensor, y: torch.Tensor, labels: np.ndarray) -> tuple[LinearMap, float]:
    """The ridge map from image to text embeddings over all rows; its strength is the one of
    :data:`RIDGE_GRID` with the best R^2 on half of the classes when fitted on the other half."""
    classes = np.unique(labels)
    held = np.isin(labels, classes[1::2])
    strength = RIDGE_GRID[0]
    if len(classes) >= 2:
        fit, check = torch.as_tensor(~held, device=x.device), torch.as_tensor(held, device=x.device)
        scores = [r_squared(LinearMap(x[fit], y[fit], s)(x[check]), y[check]) for s in RIDGE_GRID]
        strength = RIDGE_GRID[int(np.argmax(scores))]
    return LinearMap(x, y, strength), strength


def probe(models: Mapping[str, FewShotModel], data: DeviceData, settings: Sequence[EpisodeSetting],
          split: str = "val", episodes: int = 600, seed: int = 7, all_captions: bool = True) -> dict:
    """Accuracies of the three :data:`PARTS` and of the text head on image-predicted text embeddings,
    on the same fixed ``split`` episodes per setting, with the paired gain of the text and the share
    of the text model's accuracy the image carries (None when the text model is at chance). Each model
    embeds every needed sample once, for all settings. Returns a JSON-ready dict (fractions, not %)."""
    missing = [p for p in PARTS if p not in models]
    if missing:
        raise ValueError(f"probe needs an image, a text and an image+text model; missing: {', '.join(missing)}")
    image, text = models["image"], models["text"]
    base = data.dataset.split_indices("base")
    mapping, strength = fit_image_to_text(embed_indices(image, data, base, all_captions),
                                          embed_indices(text, data, base, all_captions),
                                          data.dataset.labels.numpy()[base])
    lists = [episode_list(data, split, setting, episodes, seed) for setting in settings]
    needed = np.unique(np.concatenate([eps.ravel() for eps in lists]))
    emb = {p: Embedded(needed, embed_indices(models[p], data, needed, all_captions)) for p in PARTS}
    predicted = Embedded(needed, mapping(emb["image"].emb))
    out: dict = {"split": split, "episodes": episodes, "seed": seed, "ridge_strength": strength, "settings": []}
    for setting, eps in zip(settings, lists):
        accs = {p: accuracy_per_episode(models[p], emb[p], eps, setting.way, setting.shot) for p in PARTS}
        accs["text from image"] = accuracy_per_episode(text, predicted, eps, setting.way, setting.shot)
        chance = 1 / setting.way
        above = float(accs["text"].mean()) - chance
        carried = (float(accs["text from image"].mean()) - chance) / above if above > 0 else None
        rows = torch.as_tensor(np.searchsorted(needed, np.unique(eps)), device=predicted.emb.device)  # this setting's
        out["settings"].append({
            "label": setting.label(),
            "accuracy": {k: _stat(v) for k, v in accs.items()},
            "text_adds": _stat(accs["image+text"] - accs["image"]),
            "image_carries": carried,
            "r_squared": r_squared(predicted.emb[rows], emb["text"].emb[rows]),
        })
    return out


def _stat(values: np.ndarray) -> dict:
    m = mean_ci(values)
    return {"mean": m.mean, "ci95": m.ci95}


def verdict(setting: dict) -> str:
    """One sentence on a setting of :func:`probe`'s result."""
    adds, carried = setting["text_adds"], setting["image_carries"]
    low, high = adds["mean"] - adds["ci95"], adds["mean"] + adds["ci95"]
    if low > 0:
        gain = f"the text adds {100 * adds['mean']:.2f} points (95% interval {100 * low:+.2f} to {100 * high:+.2f})"
    elif high < 0:
        gain = f"the image+text model is {-100 * adds['mean']:.2f} points below the image alone"
    else:
        gain = f"the text adds nothing measurable ({100 * adds['mean']:+.2f} ± {100 * adds['ci95']:.2f} points)"
    share = ("the text model is at chance, so there is no text knowledge to carry" if carried is None
             else f"the image predicts text embeddings that keep {100 * carried:.0f}% of the text model's "
                  "accuracy above chance")
    return f"{setting['label']}: {gain}; {share}."


def table(result: dict) -> str:
    """Markdown: one row per setting, accuracies in %."""
    cols = [*PARTS, "text from image"]
    rows = ["| setting | " + " | ".join(cols) + " | text adds | image carries | R² |",
            "|---|" + "---|" * (len(cols) + 3)]
    for s in result["settings"]:
        acc = [f"{100 * s['accuracy'][c]['mean']:.2f} ± {100 * s['accuracy'][c]['ci95']:.2f}" for c in cols]
        adds = f"{100 * s['text_adds']['mean']:+.2f} ± {100 * s['text_adds']['ci95']:.2f}"
        carried = "–" if s["image_carries"] is None else f"{100 * s['image_carries']:.0f}%"
        rows.append(f"| {s['label']} | " + " | ".join(acc) + f" | {adds} | {carried} | {s['r_squared']:.2f} |")
    legend = (f"Accuracy in % ± 95% interval over {result['episodes']} fixed {result['split']} episodes (seed "
              f"{result['seed']}). *text from image*: the text model's head on text embeddings predicted from the "
              f"image model's (ridge map fitted on base samples, strength {result['ridge_strength']:g}); *image "
              "carries*: its accuracy above chance as a share of the text model's; R²: how well the map predicts "
              "the text embeddings of these classes.")
    return "\n".join(rows) + "\n\n" + legend
