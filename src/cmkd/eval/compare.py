"""Score several trained models on the same fixed episodes and compare them pairwise."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmkd.config import EpisodeConfig
from cmkd.data.device import DeviceData
from cmkd.eval.evaluate import episode_list, evaluate_lists
from cmkd.eval.stats import mean_ci, paired_difference
from cmkd.runtime import provenance


def compare(models: dict[str, torch.nn.Module], data: DeviceData, settings: Sequence[EpisodeConfig],
            split: str = "novel", episodes: int = 600, seed: int = 2021,
            pairs: Sequence[tuple[str, str]] = (), all_captions: bool = True, progress: bool = True,
            precision: str = "fp32") -> dict:
    """Per-episode accuracies of every model on each setting's fixed episodes, with statistics.

    ``pairs`` lists ``(method, reference)`` for which the paired difference ``method -
    reference`` (mean +- 95% CI, paired t-test p-value) is reported.
    """
    ds = data.dataset
    result = {"dataset": ds.name, "split": split, "image_shape": list(ds.image_shape), "episodes": episodes,
              "seed": seed, "provenance": provenance(data.device), "ci": "1.96 * std(ddof=1) / sqrt(episodes)",
              "settings": []}
    lists = [episode_list(data, split, s, episodes, seed) for s in settings]
    shapes = [(s.way, s.shot) for s in settings]
    per_model = {}
    for name, model in tqdm(models.items(), desc="evaluate", disable=not progress, unit="model", leave=False):
        per_model[name] = evaluate_lists(model, data, lists, shapes, all_captions, precision)  # one embedding pass
    for i, setting in enumerate(settings):
        accs = {name: per_model[name][i] for name in models}
        entry = {"way": setting.way, "shot": setting.shot, "query": setting.query,
                 "fine_grained": setting.fine_grained, "label": setting.label(),
                 "methods": {n: vars(mean_ci(a)) for n, a in accs.items()},
                 "paired": {}, "per_episode": {n: np.round(a, 4).tolist() for n, a in accs.items()}}
        for a, b in pairs:
            if a in accs and b in accs:
                p = paired_difference(accs[a], accs[b])
                entry["paired"][f"{a} - {b}"] = {"mean": p.diff.mean, "ci95": p.diff.ci95, "t": p.t, "p": p.p}
        result["settings"].append(entry)
    return result


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path


def table(result: dict) -> str:
    """A Markdown table: one row per method, one column per setting (accuracy % ± 95% CI)."""
    settings = result["settings"]
    names = list(settings[0]["methods"]) if settings else []
    head = "| method | " + " | ".join(s["label"] for s in settings) + " |"
    rows = [head, "|---|" + "---|" * len(settings)]
    for n in names:
        cells = [f"{100 * s['methods'][n]['mean']:.2f} ± {100 * s['methods'][n]['ci95']:.2f}" for s in settings]
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    pair_names = list(settings[0]["paired"]) if settings else []
    for pn in pair_names:
        cells = [f"{100 * s['paired'][pn]['mean']:+.2f} ± {100 * s['paired'][pn]['ci95']:.2f} "
                 f"(p={s['paired'][pn]['p']:.2g})" for s in settings]
        rows.append(f"| *paired:* {pn} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
