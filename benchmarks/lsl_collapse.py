"""Why a large caption loss collapses RelationNet: gradients and features over the first training steps.

Language-shaped learning (Mu, Liang and Goodman, ACL 2020) adds ``lsl.weight`` x a caption decoder's NLL to the
few-shot loss. On glyphs at 8 px, ``lsl.weight=5`` makes every RelationNet seed score each class alike within about
100 episodes (RESULTS.md, "LSL at 76,800" for RelationNet); 0.005 trains. For each weight this trains the shipped
image student (RelationNet head, each of ``--seeds``; one thread) and records, at a few steps of its first episodes:

- the gradient norm that reaches the image encoder from the relation loss (MSE) and from the weighted caption loss;
- the share of the last encoder block's variance (before its BatchNorm) that differs between samples at a
  position: near 0, the encoder maps every image to the same feature map.

    .venv/bin/python benchmarks/lsl_collapse.py --out benchmarks/results/lsl_collapse.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cmkd.config import load_config
from cmkd.data.dataset import FewShotDataset
from cmkd.data.registry import load_dataset
from cmkd.files import write_atomic
from cmkd.runtime import configure_cpu, provenance
from cmkd.train.loop import Trainer

STEPS = (0, 5, 10, 20, 50, 99)


def trace(weight: float, episodes: int, out: Path, val_episodes: int = 100, data: FewShotDataset | None = None,
          seed: int = 0) -> dict:
    cfg = load_config("glyphs_student", [
        "data.low_res=8", "model.head=relationnet", f"lsl.weight={weight}", f"train.seed={seed}", "train.threads=1",
        f"train.episodes={episodes}", f"train.val_every={episodes}", f"train.val_episodes={val_episodes}",
        "train.val_fine_grained=false", f"out={out}", f"name=lsl{weight}_s{seed}"])
    trainer = Trainer(cfg, data if data is not None else load_dataset(cfg.data))
    encoder = [p for n, p in trainer.model.named_parameters() if n.startswith("image_encoder")]
    last_bn = [m for m in trainer.model.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    rows: dict[int, dict[str, float]] = {}
    shares: list[float] = []  # one training forward a step (no teacher): the k-th is step k's

    def between_share(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if trainer.model.training:
            x = inputs[0].detach().float()  # [B, C, H, W]: variance across samples at each position / in all
            shares.append((x.var(dim=0).mean() / x.var(dim=(0, 2, 3)).mean()).item())

    last_bn.register_forward_hook(between_share)
    objective = trainer.objective

    def measured(values: dict, step: int, steps: int, distil: bool = False) -> torch.Tensor:
        if step in STEPS:
            rows.setdefault(step, {})["between_share"] = shares[step]
            for name, w in (("mse", 1.0), ("lsl", weight)):
                if name not in values:  # lsl.weight=0: no caption decoder
                    rows[step][f"grad_{name}"] = 0.0
                    continue
                grads = torch.autograd.grad(values[name] * w, encoder, retain_graph=True, allow_unused=True)
                norm = torch.cat([g.float().flatten() for g in grads if g is not None]).norm()
                rows[step][f"grad_{name}"] = norm.item()
        return objective(values, step, steps, distil=distil)

    trainer.objective = measured  # type: ignore[assignment]
    trainer.fit(progress=False, overwrite=True)
    return {"weight": weight, "seed": seed, "episodes": episodes, "val_acc": trainer.best_acc,
            "steps": {str(s): rows[s] for s in sorted(rows)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=float, nargs="+", default=[5.0, 0.5, 0.05, 0.005, 0.0])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/lsl_collapse"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lsl_collapse.json"))
    args = p.parse_args()
    configure_cpu(1)
    data = load_dataset(load_config("glyphs_student", ["data.low_res=8"]).data)
    results = [trace(w, args.episodes, args.runs, data=data, seed=s) for s in args.seeds for w in args.weights]
    write_atomic(args.out, json.dumps({"dataset": "glyphs, 8 px", "head": "relationnet",
                                       "provenance": provenance(), "results": results}, indent=1))
    print("| seed | lsl.weight | step | encoder gradient: MSE | encoder gradient: weighted caption |"
          " between-sample share | val (random, end of run) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for s, row in r["steps"].items():
            print(f"| {r['seed']} | {r['weight']:g} | {s} | {row['grad_mse']:.4f} | {row['grad_lsl']:.4f} | "
                  f"{row['between_share']:.3f} | {100 * r['val_acc']:.2f} |")


if __name__ == "__main__":
    main()
