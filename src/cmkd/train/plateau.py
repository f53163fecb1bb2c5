"""Training to the plateau: a budget chosen by doubling, not by guessing (``train.budget=plateau``).

A cosine schedule needs its length up front, so the plateau is found the way the benchmarks find it:
train ``train.episodes``, then twice that, and so on, each budget a complete run of its own
(``<run>/e<episodes>/``), until one more doubling raises the best validation accuracy by less than
``train.plateau_gain`` points, or ``train.max_episodes`` is reached. The *plateau budget* is the last
budget whose doubling still paid; the run keeps the model of the budget with the best validation
accuracy (its ``best.json`` is copied to ``<run>/best.json``, so ``evaluate``, ``predict`` and ``--init``
take the folder as usual), and ``<run>/plateau.json`` records the curve. Every budget resumes on its own,
so ``--resume`` continues an interrupted search where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from cmkd.checkpoint import load_checkpoint, save_checkpoint
from cmkd.config import Config
from cmkd.files import write_atomic
from cmkd.train.loop import Trainer

log = logging.getLogger("cmkd")


def budgets(cfg: Config) -> list[int]:
    """The budgets the search may train: ``train.episodes`` doubled up to ``train.max_episodes``."""
    out, b = [], cfg.train.episodes
    while b <= max(cfg.train.max_episodes, cfg.train.episodes):
        out.append(b)
        b *= 2
    return out


def budget_config(cfg: Config, episodes: int) -> Config:
    """One budget's run: the same config with a fixed budget, in ``<out>/<name>/e<episodes>``."""
    train = dataclasses.replace(cfg.train, episodes=episodes, budget="fixed")
    return dataclasses.replace(cfg, out=str(cfg.run_dir), name=f"e{episodes}", train=train)


def fit_to_plateau(cfg: Config, make_trainer: Callable[[Config], Trainer], resume: bool = False,
                   overwrite: bool = False, progress: bool = True) -> Trainer:
    """Run the doubling search of ``cfg`` (``make_trainer`` builds one budget's trainer); returns the trainer
    of the kept budget, its best weights loaded."""
    curve: list[dict] = []
    trainers: dict[int, Trainer] = {}
    plateau = None
    for episodes in budgets(cfg):
        trainer = make_trainer(budget_config(cfg, episodes))
        done = (trainer.run_dir / "best.json").exists() and _finished(trainer)
        trainer.fit(resume=resume or done, overwrite=overwrite and not done, progress=progress,
                    desc=f"{cfg.name} e{episodes}")
        trainers[episodes] = trainer
        curve.append({"episodes": episodes, "best_val_acc": trainer.best_acc})
        log.info("%s: %d episodes, best val accuracy %.2f%%", cfg.name, episodes, 100 * trainer.best_acc)
        if len(curve) > 1 and 100 * (curve[-1]["best_val_acc"] - curve[-2]["best_val_acc"]) < cfg.train.plateau_gain:
            plateau = curve[-2]["episodes"]
            break
    kept = max(curve, key=lambda c: c["best_val_acc"])["episodes"]
    trainer = trainers[kept]
    trainer.load_best()
    _publish(cfg, trainer, curve, plateau, kept)
    return trainer


def _finished(trainer: Trainer) -> bool:
    try:
        return load_checkpoint(trainer.run_dir / "last.json")[1]["step"] >= trainer.schedule.steps
    except Exception:  # no or damaged last checkpoint: the budget trains (or resumes) as usual
        return False


def _publish(cfg: Config, trainer: Trainer, curve: list[dict], plateau: int | None, kept: int) -> None:
    """``<run>/best.json`` (the kept budget's best weights and metadata) and ``<run>/plateau.json``."""
    if not trainer.ranks.main:
        return
    top = Path(cfg.run_dir)
    tensors, meta = load_checkpoint(trainer.run_dir / "best.json")
    meta = {**meta, "plateau": {"budget": plateau, "kept": kept, "curve": curve}}
    save_checkpoint(top / "best", trainer.model, meta)
    rule = (f"double train.episodes from {cfg.train.episodes} until one more doubling raises the best validation "
            f"accuracy by less than {cfg.train.plateau_gain} points (at most {cfg.train.max_episodes} episodes)")
    write_atomic(top / "plateau.json", json.dumps({"rule": rule, "plateau_budget": plateau, "kept_budget": kept,
                                                   "reached_max": plateau is None, "curve": curve}, indent=1),
                 sync=False)
