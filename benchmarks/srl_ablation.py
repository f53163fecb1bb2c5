"""Which SRL settings help, measured on the VALIDATION split (never on novel classes).

Trains one image+text teacher and one image student alone, then image students with
several distillation settings, all on the same seeded training episodes, and scores
them on the same fixed val episodes (5-way 1-shot, random and fine-grained). Writes
JSON and prints a table. Usage:

    .venv/bin/python benchmarks/srl_ablation.py --episodes 1000 --out benchmarks/results/srl_ablation.json
    .venv/bin/python benchmarks/srl_ablation.py --set model.head=matchingnet --variants "srl tau=1" "srl tau=4"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cmkd.config import EpisodeConfig, load_config
from cmkd.data.device import DeviceData
from cmkd.data.registry import load_dataset
from cmkd.demo import DEMO_BASE
from cmkd.eval.compare import compare, table, write_json
from cmkd.runtime import configure_cpu
from cmkd.train.loop import Trainer

VARIANTS = {
    "kd tau=4": {"distill.method": "kd", "distill.tau": 4.0},
    "srl tau=1": {"distill.method": "srl", "distill.tau": 1.0},
    "srl tau=4": {"distill.method": "srl", "distill.tau": 4.0},
    "srl tau=8": {"distill.method": "srl", "distill.tau": 8.0},
    "srl tau=16": {"distill.method": "srl", "distill.tau": 16.0},
    "srl tau=4 lambda=2": {"distill.method": "srl", "distill.weight": 2.0},
    "srl tau=4 dist=5": {"distill.method": "srl", "distill.dist": 5.0},
    "srl tau=4 +angle": {"distill.method": "srl", "distill.angle": 2.0},
    "srl tau=4 teacher sees augmented": {"distill.method": "srl", "distill.teacher_inputs": "same"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=1000, help="training episodes per model")
    ap.add_argument("--eval-episodes", type=int, default=600)
    ap.add_argument("--variants", nargs="*", default=[v for v in VARIANTS if v != "srl tau=1"])
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every run")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/srl_ablation.json"))
    args = ap.parse_args()
    configure_cpu()
    base = {**DEMO_BASE, "train.episodes": args.episodes, "out": "runs/ablation"}
    for item in args.set:
        k, v = item.split("=", 1)
        base[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    start = time.perf_counter()
    cfg = load_config(base={**base, "name": "teacher", "model.modality": "image+text"})
    dataset = load_dataset(cfg.data)
    models, seconds = {}, {}
    t = time.perf_counter()
    teacher_trainer = Trainer(cfg, dataset)
    teacher_trainer.fit(desc="teacher")
    models["teacher"] = teacher_trainer.model.eval()
    seconds["teacher"] = time.perf_counter() - t
    for name, overrides in [("student", {}), *[(v, VARIANTS[v]) for v in args.variants]]:
        t = time.perf_counter()
        run_cfg = load_config(base={**base, **overrides, "name": name.replace(" ", "_").replace("=", "")})
        trainer = Trainer(run_cfg, dataset, teacher=models["teacher"] if overrides else None)
        trainer.fit(desc=name)
        models[name] = trainer.model.eval()
        seconds[name] = time.perf_counter() - t
    settings = [EpisodeConfig(5, 1, 15, False), EpisodeConfig(5, 1, 15, True)]
    result = compare(models, DeviceData(dataset), settings, "val", args.eval_episodes, 7,
                     [(n, "student") for n in models if n not in ("teacher", "student")])
    result["train_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result["base_config"] = base
    result["note"] = "final weights (no best-of-val selection), scored on the VAL split"
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(result, args.out)
    print(table(result))
    print(f"\n{args.out}  ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
