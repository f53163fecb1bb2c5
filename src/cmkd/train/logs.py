"""Training logs a user can open while a run trains (``metrics.jsonl`` and, optionally, TensorBoard), and the
checks read from them: a non-finite loss stops the run, a validation not above chance warns."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cmkd.distributed import ranks
from cmkd.errors import ConfigError, TrainingDiverged
from cmkd.files import open_append, write_atomic


class RunLog:
    """Appends one JSON line per loss read and per validation to ``run_dir/metrics.jsonl`` (flushed at
    once), and mirrors the numbers to TensorBoard when ``tensorboard`` (needs ``pip install tensorboard``)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, after_step: int | None = None) -> None:
        """``after_step``: a resumed run continues after this step; lines of later steps (written before a
        kill and replayed now) are dropped first, so each step is logged once."""
        self.path = run_dir / "metrics.jsonl"
        if after_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if _step_of(line) <= after_step]
            write_atomic(self.path, "".join(kept), sync=False)
        self._file = open_append(self.path)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._file.close()
                raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install "
                                  "'cmkd[tensorboard]' (metrics.jsonl is written either way)") from None
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        """``kind`` is ``"train"`` (running losses) or ``"val"`` (validation accuracy)."""
        self._file.write(json.dumps({"kind": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class RunningMeans:
    """The running losses of the train lines and the history: per term, an exponential mean (weight 0.1 per step)
    over the steps that produced it. :meth:`current` shows only the terms some step since the last :meth:`update`
    produced, so a term that stopped (the distillation's, once ``distill.while_teacher_leads`` turns) is not
    carried on as a stale number."""

    def __init__(self) -> None:
        self._means: dict[str, float] = {}
        self._fresh: set[str] = set()

    def update(self, rows: list[dict[str, float]]) -> None:
        self._fresh = {k for row in rows for k in row}
        for row in rows:
            for k, v in row.items():
                self._means[k] = 0.9 * self._means.get(k, v) + 0.1 * v

    def current(self) -> dict[str, float]:
        return {k: v for k, v in self._means.items() if k in self._fresh}


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line from a kill: dropped


def read_logs(pending: list[tuple[int, dict[str, torch.Tensor]]], run_dir: Path,
              episodes: Callable[[int], int]) -> list[dict[str, float]]:
    """Step logs as numbers (one device sync for many steps); stops on a non-finite loss."""
    if not pending:
        return []
    cells = [(i, k, v) for i, (_, logs) in enumerate(pending) for k, v in logs.items()]  # steps may differ in terms
    numbers = torch.stack([v for _, _, v in cells]).cpu().tolist()
    rows: list[dict[str, float]] = [{} for _ in pending]
    for (i, k, _), x in zip(cells, numbers):
        rows[i][k] = x
    for (step, _), row in zip(pending, rows):
        loss = row["loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at step {step} (episode {episodes(step)}); "
                                   f"{_kept(run_dir)}; lower train.lr and resume")
    return rows


def warn_if_at_chance(acc: float, ci: float, way: int, episode: int) -> None:
    """Warns when a validation is not above chance (its 95% interval reaches ``1/way``): a run that has not
    started to learn, or one that collapsed (its scores equal for every class), which may or may not recover.
    Under ``torchrun`` only the main process warns (every rank validates on the same gathered episodes)."""
    if acc - ci > 1 / way + 1e-6 or not ranks().main:  # (float32 means of exactly chance land a hair above it)
        return
    logging.getLogger("cmkd").warning(
        "validation at episode %d is not above chance: %.2f ± %.2f%% against 1/%d. If it stays there the run has "
        "collapsed (its scores no longer depend on the input): lower the auxiliary weights (lsl.weight, "
        "distill.weight) or train.lr. RelationNet's mean-squared error is about a tenth of cross-entropy, and "
        "weights chosen for the other heads can collapse it (lsl.weight=5 on glyphs at 8 px)",
        episode, 100 * acc, 100 * ci, way)


def _kept(run_dir: Path) -> str:
    last = run_dir / "last.json"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
