"""Model-agnostic CMKD: every head as student alone, student + CMKD, and teacher, on glyphs.

For each head (ProtoNet, MatchingNet, RelationNet, FEAT) this trains the image+text teacher,
the image student alone and the image student with the SRL, all with Conv-4 at 32x32 on the
same seeded 5-way 1-shot training episodes (the demo's settings), and scores every model on
the SAME fixed novel episodes (5-way 1-shot, random and fine-grained). Writes JSON and prints
a table. Usage:

    .venv/bin/python benchmarks/heads.py --out benchmarks/results/heads.json            # ~20 min here
    .venv/bin/python benchmarks/heads.py --quick --out /tmp/heads_quick.json            # ~3 min smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cmkd.config import EpisodeConfig, load_config
from cmkd.data.device import DeviceData
from cmkd.data.registry import load_dataset
from cmkd.demo import DEMO_BASE
from cmkd.eval.compare import compare, table, write_json
from cmkd.runtime import configure_cpu
from cmkd.train.checkpoint import load_checkpoint, model_state
from cmkd.train.loop import Trainer

HEADS = ("protonet", "matchingnet", "relationnet", "feat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=DEMO_BASE["train.episodes"])
    ap.add_argument("--eval-episodes", type=int, default=600)
    ap.add_argument("--heads", nargs="*", default=list(HEADS))
    ap.add_argument("--quick", action="store_true", help="150 training and 100 evaluation episodes")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/heads.json"))
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.eval_episodes = 150, 100
    configure_cpu()
    start = time.perf_counter()
    base = {**DEMO_BASE, "train.episodes": args.episodes, "train.val_every": max(args.episodes // 6, 1),
            "out": "runs/heads"}
    dataset = load_dataset(load_config(base=base).data)
    models, seconds = {}, {}
    for head in args.heads:
        teacher = teacher_cache = None
        for role, overrides in (("teacher", {"model.modality": "image+text"}), ("student", {}),
                                ("student + SRL", {"distill.method": "srl"})):
            t = time.perf_counter()
            cfg = load_config(base={**base, **overrides, "model.head": head, "name": f"{head}_{role}".replace(" ", "")
                                    .replace("+", "_")})
            distilled = role == "student + SRL"
            trainer = Trainer(cfg, dataset, teacher=teacher if distilled else None, teacher_cache=teacher_cache)
            trainer.fit(desc=f"{head} {role}")
            trainer.model.load_state_dict(model_state(load_checkpoint(cfg.run_dir / "best.json")[0]))
            models[f"{head}: {role}"] = trainer.model.eval()
            seconds[f"{head}: {role}"] = round(time.perf_counter() - t, 1)
            if role == "teacher":
                teacher = trainer.model
    settings = [EpisodeConfig(5, 1, 15, False), EpisodeConfig(5, 1, 15, True)]
    pairs = [(f"{h}: student + SRL", f"{h}: student") for h in args.heads]
    result = compare(models, DeviceData(dataset), settings, "novel", args.eval_episodes, 2021, pairs)
    result["train_seconds"] = seconds
    result["base_config"] = base
    result["quick"] = args.quick
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json(result, args.out)
    print(table(result))
    print(f"\n{args.out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
