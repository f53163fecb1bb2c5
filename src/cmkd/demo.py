"""``cmkd demo``: the whole story of the paper on the embedded glyph dataset.

Trains the image+text teacher, the image student alone and the image student with the
Spatial Relation Loss (plus the Hinton-KD and RKD baselines), scores them all on the
same fixed novel-class episodes, and writes ``report.md`` with the comparison table,
validation curves and the teacher's vs the students' relation matrices.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from cmkd.config import Config, load_config
from cmkd.data.device import DeviceData
from cmkd.data.registry import load_dataset
from cmkd.eval.compare import compare, table, write_json
from cmkd.eval.evaluate import episode_list
from cmkd.eval.plots import plot_relations, plot_val_curves
from cmkd.runtime import configure_cpu, provenance_line
from cmkd.train.loop import Trainer

#: Settings shared by every demo run (Conv-4 at 32x32, 5-way 1-shot training episodes).
DEMO_BASE = {
    "data.image_size": 32,
    "episode.way": 5, "episode.shot": 1, "episode.query": 5,
    "train.episodes": 1200, "train.val_every": 200, "train.val_episodes": 200, "train.val_query": 5,
    "train.lr": 0.002,
    "train.fine_grained_share": 0.5,
    "model.text_encoder": "bow",
    # tau chosen on the validation split (benchmarks/srl_ablation.py); never on novel classes
    "distill.tau": 16.0,
}
QUICK = {"train.episodes": 40, "train.val_every": 20, "train.val_episodes": 20}

RUNS = {  # name -> (overrides, distilled)
    "teacher (image+text)": ({"model.modality": "image+text"}, False),
    "student": ({"model.modality": "image"}, False),
    "student + SRL": ({"model.modality": "image", "distill.method": "srl"}, True),
    "student + KD": ({"model.modality": "image", "distill.method": "kd"}, True),
    "student + RKD": ({"model.modality": "image", "distill.method": "rkd"}, True),
}
BASELINES = ("student + KD", "student + RKD")


def _slug(name: str) -> str:
    """'student + SRL' -> 'student_SRL' (the run's directory name)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def run_demo(out: Path = Path("runs/demo"), quick: bool = False, with_baselines: bool = True,
             episodes: int | None = None) -> dict:
    """Train, evaluate and report; returns the evaluation result (also in ``out/results.json``)."""
    start = time.perf_counter()
    configure_cpu()
    base = {**DEMO_BASE, **(QUICK if quick else {}), "out": str(out)}
    cfg0 = load_config(base={**base, "name": "probe"})
    dataset = load_dataset(cfg0.data)
    summary = dataset.summary()
    print(f"glyphs: {summary['classes']} classes, {summary['images']} images, splits {summary['splits']}")
    names = [n for n in RUNS if with_baselines or n not in BASELINES]
    trained, histories, configs = {}, {}, {}
    teacher = teacher_cache = None
    for i, name in enumerate(names):
        overrides, distilled = RUNS[name]
        cfg: Config = load_config(base={**base, **overrides, "name": _slug(name)})
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        trainer = Trainer(cfg, dataset, teacher=teacher if distilled else None, teacher_cache=teacher_cache)
        teacher_cache = trainer.teacher_cache or teacher_cache  # one teacher pass serves every student
        histories[name] = trainer.fit(desc=f"[{i + 1}/{len(names)}] {name}")
        trainer.model.load_state_dict(_best_state(cfg))
        trained[name] = trainer.model.eval()
        configs[name] = cfg.to_dict()
        if name.startswith("teacher"):
            teacher = trained[name]
    train_seconds = time.perf_counter() - start

    data = DeviceData(dataset)
    ev = cfg0.eval
    n_eval = episodes or (50 if quick else ev.episodes)
    pairs = [(n, "student") for n in names if n.startswith("student +")]
    result = compare(trained, data, ev.settings, ev.split, n_eval, ev.seed, pairs)
    result["wall_seconds"] = {"train": round(train_seconds, 1), "total": round(time.perf_counter() - start, 1)}
    result["runs"] = {n: {"config": configs[n], "best_val_acc": max(h["val_acc"] for h in histories[n])}
                      for n in names}
    result["dataset_summary"] = summary
    out.mkdir(parents=True, exist_ok=True)
    plot_val_curves(histories, out / "val_curves.png", "validation accuracy, 5-way 1-shot val episodes")
    fg = next(s for s in ev.settings if s.fine_grained and s.shot == 1)
    one = episode_list(data, ev.split, fg, 1, ev.seed)[0]
    plot_relations({n: trained[n] for n in names if n in ("teacher (image+text)", "student", "student + SRL")},
                   data, one, fg.way, fg.shot, out / "relations.png",
                   title="one fine-grained novel 5-way 1-shot episode")
    result["wall_seconds"]["total"] = round(time.perf_counter() - start, 1)
    _write_report(out / "report.md", result, quick)
    write_json(result, out / "results.json")
    print("\n" + table(result))
    print(f"\nwall time {result['wall_seconds']['total']:.0f} s; report: {out / 'report.md'}")
    return result


def _best_state(cfg: Config) -> dict:
    from cmkd.train.checkpoint import load_checkpoint, model_state

    return model_state(load_checkpoint(cfg.run_dir / "best.json")[0])


def _write_report(path: Path, result: dict, quick: bool) -> None:
    s = result["dataset_summary"]
    any_run = next(iter(result["runs"].values()))["config"]
    lines = [
        "# cmkd demo: cross-modal knowledge distillation on glyphs",
        "",
        ("**Quick mode: a smoke test, not a result.**\n" if quick else ""),
        f"Dataset: embedded glyphs, {s['classes']} classes ({s['images']} images, {s['groups']} groups), "
        f"image {'x'.join(map(str, s['image_shape'][1:]))}, splits {s['splits']} (by group, seed "
        "stored with the data).",
        f"Training: Conv-4, ProtoNet head, {any_run['train']['episodes']} episodes of "
        f"{any_run['episode']['way']}-way {any_run['episode']['shot']}-shot {any_run['episode']['query']}-query "
        f"per run ({100 * any_run['train']['fine_grained_share']:.0f}% fine-grained), seed "
        f"{any_run['train']['seed']}, Adam lr {any_run['train']['lr']}, cosine schedule, best of "
        f"{any_run['train']['val_episodes']} fixed val episodes every {any_run['train']['val_every']}.",
        f"Teacher: image + text (the Unicode name, bag-of-words encoder), concatenation + MLP fusion. "
        f"SRL: KL at tau={any_run['distill']['tau']} (weight {any_run['distill']['rel']}) + distance "
        f"structure (weight {any_run['distill']['dist']}) + angle (weight {any_run['distill']['angle']}), "
        f"lambda={any_run['distill']['weight']}.",
        f"Evaluation: {result['episodes']} fixed {result['split']} episodes per setting (seed {result['seed']}), "
        f"the same for every method; mean accuracy ± {result['ci']}; paired differences with a paired "
        "t-test.",
        f"Produced by {provenance_line(result['provenance'])}; wall time {result['wall_seconds']['total']:.0f} s "
        f"(training {result['wall_seconds']['train']:.0f} s).",
        "",
        "## Accuracy on novel classes (%)",
        "",
        table(result),
        "",
        "## Validation curves",
        "",
        "![validation accuracy](val_curves.png)",
        "",
        "## Relations in one novel episode",
        "",
        "Top: p(class | query) from each model's head; bottom: pairwise distances divided by their "
        "mean, over all 5 + 75 samples (support first, then queries by class).",
        "",
        "![relation matrices](relations.png)",
        "",
        "Per-episode accuracies and full configs: `results.json`.",
    ]
    path.write_text("\n".join(lines) + "\n")

