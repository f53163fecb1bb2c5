"""Score several trained models on the same fixed episodes and compare them pairwise."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.eval.evaluate import episode_list, evaluate_lists
from cmkd.eval.stats import SeedStat, over_seeds, paired_over_seeds
from cmkd.files import write_atomic
from cmkd.models.fewshot import FewShotModel
from cmkd.runtime import provenance

Runs = FewShotModel | Sequence[FewShotModel]

CI_NOTE = ("95% interval: Student t (Welch-Satterthwaite dof) times the standard error from the per-episode "
           "spread and, with several training runs per method, the spread of the run means")


def compare(models: Mapping[str, Runs], data: DeviceData, settings: Sequence[EpisodeSetting],
            split: str = "novel", episodes: int = 600, seed: int = 2021,
            pairs: Sequence[tuple[str, str]] = (), all_captions: bool = True, progress: bool = True,
            precision: str = "fp32") -> dict:
    """Per-episode accuracies of every method on each setting's fixed episodes, with statistics.

    A method is one trained model or several (e.g. one per training seed), all scored on the
    same episodes; its mean and interval cover episodes and runs (:func:`over_seeds`).
    ``pairs`` lists ``(method, reference)`` for which the paired difference ``method -
    reference`` is reported (mean, 95% interval, t, p).
    """
    ds = data.dataset
    runs = {name: list(m) if isinstance(m, Sequence) else [m] for name, m in models.items()}
    result: dict[str, Any] = {
        "dataset": ds.name, "split": split, "image_shape": list(ds.image_shape), "episodes": episodes, "seed": seed,
        "provenance": provenance(data.device), "ci": CI_NOTE, "runs_per_method": {n: len(r) for n, r in runs.items()},
        "settings": []}
    lists = [episode_list(data, split, s, episodes, seed) for s in settings]
    shapes = [(s.way, s.shot) for s in settings]
    per_model: dict[str, list[list[np.ndarray]]] = {}
    bar = tqdm(total=sum(map(len, runs.values())), desc="evaluate", disable=not progress, unit="model", leave=False)
    for name, group in runs.items():
        per_model[name] = []
        for model in group:  # one embedding pass per model for all settings
            per_model[name].append(evaluate_lists(model, data, lists, shapes, all_captions, precision))
            bar.update(1)
    bar.close()
    for i, setting in enumerate(settings):
        accs = {name: np.stack([r[i] for r in per_model[name]]) for name in runs}
        entry: dict[str, Any] = {"way": setting.way, "shot": setting.shot, "query": setting.query,
                 "fine_grained": setting.fine_grained, "label": setting.label(),
                 "methods": {n: _stat(over_seeds(a, 1 / setting.way)) for n, a in accs.items()},
                 "paired": {}, "per_episode": {n: np.round(a, 4).tolist() for n, a in accs.items()}}
        for a, b in pairs:
            if a in accs and b in accs:
                entry["paired"][f"{a} - {b}"] = _stat(paired_over_seeds(accs[a], accs[b]))
        result["settings"].append(entry)
    return result


def _stat(s: SeedStat) -> dict:
    out = dataclasses.asdict(s)
    out["seed_means"] = list(s.seed_means)
    return out


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(result, indent=1), sync=False)


def table(result: dict) -> str:
    """A Markdown table: one row per method, one column per setting (accuracy % ± 95% CI), and its legend."""
    settings = result["settings"]
    names = list(settings[0]["methods"]) if settings else []
    head = "| method | " + " | ".join(s["label"] for s in settings) + " |"
    rows = [head, "|---|" + "---|" * len(settings)]
    for n in names:
        seeds = result.get("runs_per_method", {}).get(n, 1)
        label = f"{n} ({seeds} seeds)" if seeds > 1 else n
        cells = [f"{100 * s['methods'][n]['mean']:.2f} ± {100 * s['methods'][n]['ci95']:.2f}" for s in settings]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    pair_names = list(settings[0]["paired"]) if settings else []
    for pn in pair_names:
        cells = [f"{100 * s['paired'][pn]['mean']:+.2f} ± {100 * s['paired'][pn]['ci95']:.2f} "
                 f"(p={s['paired'][pn]['p']:.2g})" for s in settings]
        rows.append(f"| *paired:* {pn} | " + " | ".join(cells) + " |")
    seeds = max(result.get("runs_per_method", {}).values(), default=1)
    legend = (f"Accuracy in % on {result['episodes']} fixed {result['split']} episodes per setting (seed "
              f"{result['seed']}). ± is the 95% interval of the mean over the episodes"
              f"{' and the training runs' if seeds > 1 else ''} (Student t). *paired* rows: the difference on "
              "the same episodes, p two-sided against no difference.")
    return "\n".join(rows) + "\n\n" + legend
