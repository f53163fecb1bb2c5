"""Does CMKD transfer? Teacher, students alone and distilled students, over training seeds.

For every head and training seed this trains the image+text teacher, the one-modality student
alone and one distilled student per method (KD, RKD, SRL, or named variants), all on the same
seeded training episodes, then scores every run on the same fixed episodes of each ``--split`` and
pools the seeds (mean and interval over seeds and episodes; paired differences against the
student alone). A variant with ``distill.method=none`` trains without the teacher (e.g. LSL alone:
``--variant "lsl: distill.method=none lsl.weight=5"``). Settings are chosen with ``--split val``;
``novel`` is for the final table only (``--split val novel`` writes one JSON per split).

    .venv/bin/python benchmarks/transfer.py --dataset glyphs --heads protonet --seeds 0 1 2 --split val \\
        --modalities image text --methods kd srl --variant "srl tau=2: distill.method=srl distill.srl.tau=2" \\
        --out /tmp/val.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from cmkd.config import load_config
from cmkd.data.device import DeviceData
from cmkd.data.episodes import EpisodeSetting
from cmkd.data.registry import load_dataset
from cmkd.errors import USER_ERRORS
from cmkd.eval.compare import compare, table, write_json
from cmkd.runtime import configure_cpu, pick_device
from cmkd.train.loop import Trainer

#: the shipped configs a user starts from: the teacher, the student alone, the distilled student
TEACHER, STUDENT, DISTILLED = "glyphs_teacher", "glyphs_student", "glyphs_distill"
METHODS = {"kd": {"distill.method": "kd"}, "rkd": {"distill.method": "rkd"}, "srl": {"distill.method": "srl"}}


def _pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _variant(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    return name.strip(), _pairs(rest.split())


def _train(config: str, base: dict, overrides: dict, name: str, dataset, teacher=None, teacher_cache=None,
           device: torch.device | str = "cpu"):
    cfg = load_config(config, flags={**base, **overrides, "name": name})
    trainer = Trainer(cfg, dataset, device, teacher=teacher, teacher_cache=teacher_cache)
    start = time.perf_counter()
    trainer.fit(desc=name, progress=False, overwrite=True)
    trainer.load_best()
    return trainer, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="glyphs")
    ap.add_argument("--modalities", nargs="+", default=["image"], choices=["image", "text"],
                    help="student modalities, each distilled from the same teachers")
    ap.add_argument("--heads", nargs="+", default=["protonet"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--split", nargs="+", default=["val"], choices=["val", "novel"],
                    help="splits to score on; with several, OUT gets a _<split> suffix per split")
    ap.add_argument("--methods", nargs="*", default=["kd", "rkd", "srl"], choices=list(METHODS))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME: key=value ...",
                    help="an extra distilled student with these overrides")
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every run")
    ap.add_argument("--teacher-set", nargs="*", default=[], metavar="key=value", help="overrides for the teacher")
    ap.add_argument("--student-set", nargs="*", default=[], metavar="key=value",
                    help="overrides for the students (alone and distilled)")
    ap.add_argument("--episodes", type=int, default=600, help="evaluation episodes per setting")
    ap.add_argument("--no-teacher-row", action="store_true")
    ap.add_argument("--runs", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--device", help="cpu, cuda, ... (none: cuda if available)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        run(args)
    except USER_ERRORS as err:  # names the file or flag and the fix: a line, not a traceback
        raise SystemExit(f"transfer.py: error: {err}") from None


def run(args: argparse.Namespace) -> None:
    """Train the teachers and students of every head and seed, score them and write ``args.out``."""
    device = pick_device(args.device)  # checked before anything trains
    configure_cpu()
    start = time.perf_counter()
    base = {"data.dataset": args.dataset, "out": str(args.runs), **_pairs(args.set)}
    dataset = load_dataset(load_config(STUDENT, flags=base).data)
    students = {"student": {}, **{m: METHODS[m] for m in args.methods}, **dict(map(_variant, args.variant))}
    runs: dict[str, list] = {}
    seconds: dict[str, float] = {}
    for head in args.heads:
        for seed in args.seeds:
            common = {**base, "model.head": head, "train.seed": seed}
            tag = f"{head}_s{seed}"
            teacher, t_sec = _train(TEACHER, {**common, **_pairs(args.teacher_set)}, {}, f"{tag}_teacher", dataset,
                                    device=device)
            seconds[f"{head} teacher s{seed}"] = round(t_sec, 1)
            if not args.no_teacher_row:
                runs.setdefault(f"{head}: teacher", []).append(teacher.model.eval())
            cache = None
            for modality in args.modalities:
                for method, overrides in students.items():
                    label = f"{head}: {method}" if len(args.modalities) == 1 else f"{head} {modality}: {method}"
                    student_base = {**common, "model.modality": modality, **_pairs(args.student_set)}
                    distilled = method != "student" and overrides.get("distill.method") != "none"
                    trainer, sec = _train(DISTILLED if distilled else STUDENT, student_base, overrides,
                                          f"{tag}_{modality}_{method}".replace(" ", "_").replace("=", ""), dataset,
                                          teacher.model if distilled else None, cache if distilled else None,
                                          device=device)
                    if distilled:
                        cache = trainer.teacher_cache or cache
                    runs.setdefault(label, []).append(trainer.model.eval())
                    seconds[f"{label} s{seed}"] = round(sec, 1)
                    print(f"{label} seed {seed}: best val {100 * trainer.best_acc:.2f}% ({sec:.0f} s)", flush=True)
    settings = [EpisodeSetting(5, 1, 15, False), EpisodeSetting(5, 1, 15, True)]
    groups = [f"{h}" if len(args.modalities) == 1 else f"{h} {m}" for h in args.heads for m in args.modalities]
    pairs = [(f"{g}: {m}", f"{g}: student") for g in groups for m in students if m != "student"]
    pairs += [(f"{g.split()[0]}: teacher", f"{g}: student") for g in groups if not args.no_teacher_row]
    data = DeviceData(dataset, device)
    for split in args.split:
        result = compare(runs, data, settings, split, args.episodes, 7 if split == "val" else 2021, pairs,
                         progress=False)
        result.update({"train_seconds": seconds, "base": base, "modalities": args.modalities, "seeds": args.seeds,
                       "teacher_set": args.teacher_set, "student_set": args.student_set, "variants": args.variant,
                       "configs": [TEACHER, STUDENT, DISTILLED], "wall_seconds": round(time.perf_counter() - start, 1),
                       "note": "best-of-val checkpoints; evaluation seed 7 on val, 2021 on novel"})
        out = args.out if len(args.split) == 1 else args.out.with_name(f"{args.out.stem}_{split}{args.out.suffix}")
        write_json(result, out)
        print(table(result))
        print(f"\n{out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
