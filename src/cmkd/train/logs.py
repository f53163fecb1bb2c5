"""Training logs a user can open while a run trains: ``metrics.jsonl`` and, optionally, TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cmkd.config import ConfigError


class RunLog:
    """Appends one JSON line per loss read and per validation to ``run_dir/metrics.jsonl`` (flushed at
    once), and mirrors the numbers to TensorBoard when ``tensorboard`` (needs ``pip install tensorboard``)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
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
