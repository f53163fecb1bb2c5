"""``cmkd demo``: the paper's story in both directions on the embedded glyph dataset.

Trains the image+text teacher, then the image student and the text student, each alone, with
Hinton KD and with the Spatial Relation Loss (the shipped configs ``glyphs_teacher``,
``glyphs_student`` and ``glyphs_distill``), scores them all on the same fixed novel-class
episodes, and writes ``report.md`` with the table, validation curves and the teacher's vs the
students' relations in one episode.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import torch

from cmkd.config import Config, load_config
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.data.registry import load_dataset
from cmkd.eval.compare import compare, table, write_json
from cmkd.eval.evaluate import episode_list
from cmkd.eval.plots import plot_relations, plot_val_curves
from cmkd.files import write_atomic
from cmkd.runtime import provenance_line
from cmkd.train.loop import Trainer

#: Evaluation: 600 fixed novel episodes per setting, 15 queries per class, the same for every run.
SETTINGS = [EpisodeSetting(5, 1, 15, False), EpisodeSetting(5, 5, 15, False),
            EpisodeSetting(5, 1, 15, True), EpisodeSetting(5, 5, 15, True)]
SPLIT, EPISODES, SEED = "novel", 600, 2021
QUICK = ["train.episodes=40", "train.val_every=20", "train.val_episodes=20"]

#: run name -> (shipped config, overrides); students are distilled from the teacher when their
#: config is glyphs_distill
RUNS = {
    "teacher (image+text)": ("glyphs_teacher", []),
    "image student": ("glyphs_student", []),
    "image student + KD": ("glyphs_distill", ["distill.method=kd"]),
    "image student + SRL": ("glyphs_distill", []),
    "text student": ("glyphs_student", ["model.modality=text"]),
    "text student + KD": ("glyphs_distill", ["model.modality=text", "distill.method=kd"]),
    "text student + SRL": ("glyphs_distill", ["model.modality=text"]),
}
BASELINES = ("image student + KD", "text student + KD")


def _slug(name: str) -> str:
    """'image student + SRL' -> 'image_student_SRL' (the run's directory name)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_")


def run_demo(out: Path = Path("runs/demo"), quick: bool = False, with_baselines: bool = True,
             episodes: int | None = None, device: torch.device | str = "cpu") -> dict:
    """Train and evaluate on ``device``, and report; returns the evaluation result (also in ``out/results.json``)."""
    start = time.perf_counter()
    names = [n for n in RUNS if with_baselines or n not in BASELINES]
    configs = {n: load_config(RUNS[n][0], [*RUNS[n][1], *(QUICK if quick else []), f"out={out}",
                                           f"name={_slug(n)}"]) for n in names}
    dataset = load_dataset(configs[names[0]].data)
    summary = dataset.summary()
    print(f"glyphs: {summary['classes']} classes, {summary['images']} images, splits {summary['splits']}")
    trained, histories = {}, {}
    teacher = teacher_cache = None
    for i, name in enumerate(names):
        cfg: Config = configs[name]
        distilled = RUNS[name][0] == "glyphs_distill"
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        trainer = Trainer(cfg, dataset, device, teacher=teacher if distilled else None,
                          teacher_cache=teacher_cache)
        teacher_cache = trainer.teacher_cache or teacher_cache  # one teacher pass serves every student
        histories[name] = trainer.fit(desc=f"[{i + 1}/{len(names)}] {name}")
        trained[name] = trainer.load_best()
        if name.startswith("teacher"):
            teacher = trained[name]
    train_seconds = time.perf_counter() - start

    data = DeviceData(dataset, device)
    pairs = [(n, f"{n.split(' + ')[0]}") for n in names if " + " in n]
    pairs += [("teacher (image+text)", "image student"), ("teacher (image+text)", "text student")]
    result = compare(trained, data, SETTINGS, SPLIT, episodes or (50 if quick else EPISODES), SEED, pairs)
    result["wall_seconds"] = {"train": round(train_seconds, 1)}
    result["runs"] = {n: {"config": configs[n].to_dict(), "best_val_acc": max(h["val_acc"] for h in histories[n])}
                      for n in names}
    result["dataset_summary"] = summary
    out.mkdir(parents=True, exist_ok=True)
    plot_val_curves(histories, out / "val_curves.png",
                    "validation accuracy, 5-way 1-shot val episodes; grey: the other runs")
    fg = SETTINGS[2]
    one = episode_list(data, SPLIT, fg, 1, SEED)[0]
    srl = configs["image student + SRL"].distill.srl
    shown = [n for n in ("teacher (image+text)", "image student", "image student + KD", "image student + SRL")
             if n in trained]
    plot_relations({n: trained[n] for n in shown}, data, one, fg.way, fg.shot, out / "relations.png",
                   tau=srl.tau, standardised=srl.standardise,
                   title="one fine-grained novel 5-way 1-shot episode, as the SRL compares it")
    result["wall_seconds"]["total"] = round(time.perf_counter() - start, 1)
    _write_report(out / "report.md", result, quick)
    write_json(result, out / "results.json")
    print("\n" + table(result))
    print(f"\nwall time {result['wall_seconds']['total']:.0f} s; report: {out / 'report.md'}")
    return result


def _write_report(path: Path, result: dict, quick: bool) -> None:
    s = result["dataset_summary"]
    runs = result["runs"]
    teacher = runs["teacher (image+text)"]["config"]
    student = runs["image student"]["config"]
    distill = runs["image student + SRL"]["config"]["distill"]
    srl = distill["srl"]
    t = student["train"]
    view = "the teacher's clean inputs" if srl["student_inputs"] == "clean" else "its own training view"
    lines = [
        "# cmkd demo: cross-modal knowledge distillation on glyphs, in both directions",
        "",
        ("**Quick mode: a smoke test, not a result.**\n" if quick else ""),
        f"Dataset: embedded glyphs, {s['classes']} classes ({s['images']} images, {s['groups']} groups), "
        f"image {'x'.join(map(str, s['image_shape'][1:]))}, splits {s['splits']} (by group). Text: ten generated "
        "descriptions per image, each naming a random subset of the letter's and the face's facts.",
        f"Students: Conv-4 (image) or bag of words (text), ProtoNet head, {t['episodes']} episodes of "
        f"{student['episode']['way']}-way {student['episode']['shot']}-shot {student['episode']['query']}-query "
        f"({100 * t['fine_grained_share']:.0f}% fine-grained), seed {t['seed']}, Adam lr {t['lr']}, cosine "
        f"schedule, best of {t['val_episodes']} fixed val episodes every {t['val_every']}.",
        f"Teacher: image + text, {teacher['model']['fusion']} fusion, {teacher['train']['episodes']} episodes. "
        f"SRL: relation term on {srl['standardise']}-standardised scores at tau={srl['tau']} (weight {srl['rel']}) "
        f"+ distance structure (weight {srl['dist']}), lambda={distill['weight']}, the student's side computed on "
        f"{view}; KD: Hinton KD on raw episode logits at tau={distill['kd']['tau']}, on the student's training view.",
        f"Evaluation: {result['episodes']} fixed {result['split']} episodes per setting (seed {result['seed']}), "
        f"the same for every method; {result['ci']}. One training seed: the intervals cover the episodes, "
        "not training randomness (the source repository's benchmarks/RESULTS.md has three seeds).",
        f"Produced by {provenance_line(result['provenance'])}; wall time {result['wall_seconds']['total']:.0f} s "
        f"(training {result['wall_seconds']['train']:.0f} s).",
        "",
        "## Accuracy on novel classes (%)",
        "",
        f"**Budget: {t['episodes']} training episodes per student. These students are not converged**: the image "
        "student alone keeps gaining more than a point per doubling of its episodes up to 19,200 on glyphs (3 "
        "seeds), and a one-seed check found the SRL's gain gone or reversed at 9,600. Read this table as what the "
        "pipeline does early in training, not as the converged effect of CMKD, which is not established yet (the "
        "source repository's benchmarks/RESULTS.md, \"Budget protocol\", tracks it).",
        "",
        table(result),
        "",
        "## Validation curves",
        "",
        "![validation accuracy](val_curves.png)",
        "",
        "## Relations in one novel episode",
        "",
        "Top: each model's p(class | query), on scores standardised as the SRL compares them, at the SRL's "
        "temperature; bottom: pairwise distances divided by their mean over all 5 + 75 samples (support, "
        "then queries by class; the blue line separates them).",
        "",
        "![relation matrices](relations.png)",
        "",
        "Per-episode accuracies and full configs: `results.json`.",
    ]
    write_atomic(path, "\n".join(lines) + "\n", sync=False)
