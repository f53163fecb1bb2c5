"""Do two commits train the same weights? Short fixed runs covering every loss path, digested.

Run it at each commit (a worktree per commit, ``PYTHONPATH=<worktree>/src``) and compare the JSONs:

    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/same_weights.py run --old-keys --out /tmp/before.json
    .venv/bin/python benchmarks/same_weights.py run --out /tmp/after.json
    .venv/bin/python benchmarks/same_weights.py compare /tmp/before.json /tmp/after.json

``--old-keys`` names the SRL settings as before the config rename (``distill.tau`` ...). Each run: 40 episodes on
the shipped glyphs, seed 0, one thread; the digest is a SHA-256 over every tensor of the final state dict;
``eval`` holds the per-episode accuracies of one fixed checkpoint on 4 x 100 novel episodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cmkd.config import load_config
from cmkd.data.registry import load_dataset
from cmkd.eval.evaluate import episode_list, evaluate_lists
from cmkd.files import write_atomic
from cmkd.runtime import configure_cpu
from cmkd.train.loop import Trainer

LIVE = {"distill.teacher_inputs": "same", "distill.warmup": 0.5, "distill.srl.student_inputs": "same",
        "distill.srl.angle": 0.5, "distill.srl.correct_only": True, "distill.srl.standardise": "query"}
RUNS: list[tuple[str, str, dict[str, object], bool]] = [  # name, shipped config, overrides, distilled
    ("teacher", "glyphs_teacher", {}, False), ("student", "glyphs_student", {}, False),
    ("text", "glyphs_student", {"model.modality": "text"}, False),
    ("matching", "glyphs_student", {"model.head": "matchingnet"}, False),
    ("relation", "glyphs_student", {"model.head": "relationnet"}, False),
    ("feat", "glyphs_student", {"model.head": "feat", "train.pretrain_epochs": 1}, False),
    ("late", "glyphs_teacher", {"model.fusion": "late", "model.branch_loss": 0.5, "model.modality_dropout": 0.3},
     False),
    ("lsl", "glyphs_student", {"lsl.weight": 2.0}, False), ("srl", "glyphs_distill", {}, True),
    ("srl_text", "glyphs_distill", {"model.modality": "text"}, True),
    ("kd", "glyphs_distill", {"distill.method": "kd"}, True),
    ("rkd", "glyphs_distill", {"distill.method": "rkd"}, True),
    ("srl_live", "glyphs_distill", LIVE, True), ("srl_lsl", "glyphs_distill", {"lsl.weight": 1.0}, True),
]


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run(args: argparse.Namespace) -> None:
    from cmkd.data.episodes import EpisodeSetting

    configure_cpu(1)
    base = {"out": str(args.runs), "train.episodes": 40, "train.val_every": 20, "train.val_episodes": 20}
    ds = load_dataset(load_config("glyphs_student").data)
    out: dict[str, object] = {}
    teacher: Trainer | None = None
    for name, config, overrides, distilled in RUNS:
        if args.only and name not in (*args.only, "teacher", "student"):  # the teacher and the eval's student
            continue
        if args.old_keys:
            overrides = {k.replace("distill.srl.", "distill."): v for k, v in overrides.items()}
        t = Trainer(load_config(config, flags={**base, **overrides, "name": name}), ds,
                    teacher=teacher.model if distilled and teacher else None)
        history = t.fit(progress=False, overwrite=True)
        out[name] = {"digest": digest(t.model), "val": [h["val_acc"] for h in history]}
        teacher = t if name == "teacher" else teacher
        print(name, out[name], flush=True)
    student = Trainer(load_config("glyphs_student", flags={**base, "name": "student"}), ds)
    model, data = student.load_best(), student.data
    settings = [EpisodeSetting(5, s, 15, f) for s in (1, 5) for f in (False, True)]
    accs = evaluate_lists(model, data, [episode_list(data, "novel", s, 100, 2021) for s in settings],
                          [(s.way, s.shot) for s in settings])
    out["eval"] = [np.round(a, 6).tolist() for a in accs]
    write_atomic(args.out, json.dumps(out, indent=0), sync=False)


def compare(args: argparse.Namespace) -> None:
    a, b = json.loads(args.before.read_text()), json.loads(args.after.read_text())
    for name in a:
        if name not in b:
            print(f"{name}: only in {args.before}")
        elif name == "eval":
            print(f"eval: {'identical' if a[name] == b.get(name) else 'DIFFERENT'}")
        else:
            word = {True: "identical", False: "DIFFERENT"}
            print(f"{name}: weights {word[a[name]['digest'] == b[name]['digest']]}, "
                  f"val {word[a[name]['val'] == b[name]['val']]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--old-keys", action="store_true")
    r.add_argument("--runs", type=Path, default=Path("runs/same_weights"))
    r.add_argument("--only", nargs="+", choices=[name for name, *_ in RUNS],
                   help="these runs only (besides the teacher and the student, which the others need)")
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
