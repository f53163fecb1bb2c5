"""Training logs a user can open while a run trains: ``metrics.jsonl`` and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cmkd.errors import ConfigError, TrainingCollapsed, TrainingDiverged
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


def stop_if_collapsed(acc: float, ci: float, way: int, n: int, episode: int, run_dir: Path) -> None:
    """Stops a run whose validation scored exactly chance on each of its ``n`` episodes (``ci`` 0): its
    predictions no longer depend on the input (a dead relation module or encoder); such runs were not seen to
    recover."""
    if n < 2 or ci != 0.0 or not math.isclose(acc, 1 / way, abs_tol=1e-6):
        return
    raise TrainingCollapsed(
        f"training collapsed by episode {episode}: every one of the {n} val episodes scored exactly chance "
        f"(1/{way}), so the model's predictions no longer depend on its input; {_kept(run_dir)}. Lower the "
        "auxiliary weights (lsl.weight, distill.weight) or train.lr and train again: RelationNet's mean-squared "
        "error is about a tenth of cross-entropy, and weights chosen for the other heads can collapse it "
        "(on glyphs at 8 px lsl.weight=5 did in every seed, 0.05 in one of three)")


def _kept(run_dir: Path) -> str:
    last = run_dir / "last.json"
    return f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
