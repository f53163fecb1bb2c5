"""What a run folder holds about a run in progress: the ``last`` and ``best`` checkpoints, written by
rank 0, and the resume that continues a run exactly (refusing another config, teacher, model or
world size, and falling back to the previous checkpoint or repairing ``best`` after a crash)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmkd import distributed
from cmkd.checkpoint import load_latest_good, model_state, save_checkpoint, unflatten_optimizer
from cmkd.config import Config, resume_conflicts
from cmkd.errors import ConfigError
from cmkd.models.fewshot import FewShotModel
from cmkd.run_folder import RunDirectory, repair_best
from cmkd.train.logs import RunLog

log = logging.getLogger("cmkd")


@dataclass
class Progress:
    """Where a run stands: steps done, validation history, best val accuracy, recoveries."""

    step: int = 0
    history: list[dict] = field(default_factory=list)
    pretrain_losses: list[float] = field(default_factory=list)
    best_acc: float = -1.0
    best_step: int = -1  # the step whose weights best.json holds
    recovered: list[str] = field(default_factory=list)  # damaged checkpoints met on resume, and what was done

    def record(self, acc: float, ci: float, episodes: int, running: dict[str, float], seconds: float) -> bool:
        """Add a validation to the history; returns whether it is the best so far. ``seconds``: training time
        so far, summed over the run's resumes (a stretch lost to a crash after the last checkpoint not counted)."""
        improved = acc > self.best_acc
        self.best_acc = max(self.best_acc, acc)
        self.history.append({"step": self.step, "episodes": episodes, **{k: round(v, 5) for k, v in running.items()},
                             "val_acc": acc, "val_ci95": ci, "seconds": round(seconds, 2)})
        return improved


class RunState:
    """Saves and resumes the trainable state of a run (model, optimizer, grad scaler, LSL's decoder)."""

    def __init__(self, run_dir: Path, model: FewShotModel, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, decoder: torch.nn.Module | None, ranks: distributed.Ranks,
                 static: dict[str, Any]) -> None:
        """``static``: metadata fixed for the run (config, dataset summary, provenance, teacher digest, ...)."""
        self.run_dir, self.model, self.optimizer, self.scaler = run_dir, model, optimizer, scaler
        self.decoder, self.ranks, self.static = decoder, ranks, static
        self.progress = Progress()

    def meta(self) -> dict[str, Any]:
        p = self.progress
        return {"spec": self.model.spec(), **self.static, "step": p.step, "history": p.history,
                "pretrain_losses": p.pretrain_losses, "best_acc": p.best_acc, "best_step": p.best_step,
                "world_size": self.ranks.world,
                "grad_scaler": self.scaler.state_dict(), "recovered": p.recovered}

    @contextlib.contextmanager
    def session(self, cfg: Config, resume: bool, overwrite: bool) -> Iterator[tuple[bool, RunLog | None]]:
        """The run folder locked for this run (rank 0), checked (an existing run needs ``resume`` or
        ``overwrite``), resumed or cleared, its config written and its log open; yields
        ``(resumed, log)`` (no log on other ranks) and releases everything after."""
        main, folder, runlog = self.ranks.main, RunDirectory(self.run_dir), None
        if main:
            folder.acquire()
        try:
            if main:
                folder.check(resume, overwrite)
            resumed = resume and self.resume()  # checked before anything in the run directory is written
            if main:
                if overwrite and not resumed:
                    folder.clear()
                folder.write_config(cfg.to_dict())
                runlog = RunLog(self.run_dir, cfg.train.tensorboard, after_step=self.progress.step if resumed else None)
                if resumed:
                    log.info("resumed %s at step %d", self.run_dir, self.progress.step)
            yield resumed, runlog
        finally:
            if runlog is not None:
                runlog.close()
            folder.release()

    def save(self, best: bool) -> None:
        """Checkpoint ``best`` (when it improved), then ``last``; rank 0 writes, every rank holds the same weights.

        ``best`` goes first: a kill between the two leaves ``last`` one validation behind, and the resumed run
        replays that validation (bit-identically) and finds the same best again. The other order could leave
        a ``last`` that claims a best accuracy whose weights were never written."""
        if self.ranks.main:
            extra = {"lsl": self.decoder} if self.decoder is not None else None
            if best:
                self.progress.best_step = self.progress.step
                save_checkpoint(self.run_dir / "best", self.model, self.meta(), extra=extra)
            save_checkpoint(self.run_dir / "last", self.model, self.meta(), self.optimizer, extra)
        distributed.barrier()

    def resume(self) -> bool:
        """Continue from ``run_dir/last`` if it exists; returns whether it did. A run with another
        training config or teacher is refused, naming the differing fields."""
        path = self.run_dir / "last.json"
        if not path.exists() and not (self.run_dir / "last.prev.json").exists():
            return False
        tensors, meta, used = load_latest_good(path)
        p = self.progress
        if used != path:
            p.recovered.append(f"step {meta['step']}: {path.name} was damaged; resumed from {used.name}")
            log.warning("%s is damaged; resuming from the previous checkpoint %s", path, used)
        conflicts = resume_conflicts(meta.get("config", {}), self.static["config"])
        if meta.get("teacher_sha256") != self.static["teacher_sha256"]:
            conflicts.append("the teacher's weights differ (distill.teacher names another teacher)")
        if conflicts:
            raise ConfigError(f"--resume: {path} holds a run with another training config; refusing to continue "
                              "it with:\n  " + "\n  ".join(conflicts) +
                              "\nStart a new run name (--name ...), or resume with the run's own settings")
        if meta["spec"] != self.model.spec():
            raise ConfigError(f"{path} was trained with another model or vocabulary; start a new run name "
                              "(name=...) or delete the run directory")
        if meta.get("world_size", 1) != self.ranks.world:
            raise ConfigError(f"{path} was trained by {meta.get('world_size', 1)} process(es); resume it with "
                              f"the same number (this is {self.ranks.world}) so it follows the same episodes")
        self.model.load_state_dict(model_state(tensors))
        if self.decoder is not None:
            self.decoder.load_state_dict(model_state(tensors, "lsl"))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        if meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        p.step, p.history, p.best_acc = meta["step"], meta["history"], meta["best_acc"]
        p.best_step = meta.get("best_step", -1)
        p.pretrain_losses = meta.get("pretrain_losses", [])
        p.recovered = [*meta.get("recovered", []), *p.recovered]
        p.best_acc, note = repair_best(self.run_dir, p.best_acc)
        if note is not None:
            p.recovered.append(f"step {p.step}: {note}")
            log.warning("%s: %s", self.run_dir, note)
        return True
