"""Run folders: exclusive, non-destructive use of ``<out>/<name>`` (a lock naming the holder, no run
replaced by accident), a writability check before long work, and repair of a damaged best checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from cmkd.checkpoint import load_checkpoint
from cmkd.errors import CheckpointError, FolderInUseError, OutputFolderError
from cmkd.files import new_file, open_lock, refuse_link, write_atomic

#: The entries cmkd writes in a run folder (a link planted under any of them is refused up front).
WRITTEN = (".lock", "config.json", "metrics.jsonl", "last.json", "last.prev.json", "best.json", "best.prev.json",
           "val_curve.png")


def ensure_writable_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there (before any long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = new_file(folder, "cmkd-write-test")
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise OutputFolderError(f"cannot write to {folder} ({err.strerror or err}); choose another output "
                                "location") from None
    return folder


class RunDirectory:
    """Exclusive use of a run folder: a lock naming the process that holds it (released when the
    process ends, however it ends), and a refusal to train over an existing run by accident."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    def has_run(self) -> bool:
        """A run's checkpoints, or those of a budget of a plateau search (``e<episodes>/``)."""
        names = ("last.json", "last.prev.json", "best.json", "best.prev.json")
        return any((self.path / f).exists() for f in names) or \
            any((sub / "last.json").exists() for sub in self.path.glob("e[0-9]*") if sub.is_dir())

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse to start a new run where one exists unless ``resume`` or ``overwrite`` says what to do,
        or where nothing can be written."""
        ensure_writable_folder(self.path)
        for name in WRITTEN:
            refuse_link(self.path / name)
        if self.has_run() and not resume and not overwrite:
            raise OutputFolderError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                                 "replace it, or choose another name (--name)")

    def acquire(self) -> None:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        lock = open_lock(self.path / ".lock")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise FolderInUseError(f"{self.path} is in use by process {holder} (lock {self.path / '.lock'}); wait for "
                                 "it to finish or choose another name (--name)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def write_config(self, config: dict) -> None:
        """The run's effective config as ``config.json`` (what a reader of the folder looks at first)."""
        write_atomic(self.path / "config.json", json.dumps(config, indent=1), sync=False)

    def clear(self) -> None:
        """Remove the checkpoints of the run this folder holds (``--overwrite``)."""
        for f in self.path.iterdir():
            if f.name.startswith(("last", "best")) and f.suffix in (".json", ".safetensors") or \
                    f.name in ("config.json", "metrics.jsonl"):
                f.unlink()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None


def repair_best(run_dir: Path, best_acc: float) -> tuple[float, str | None]:
    """After a crash ``best.json`` may name damaged weights: fall back to ``best.prev.json`` (and its
    accuracy), or drop it so the next validation writes a new best. Returns the best accuracy to
    continue from and a note of what was done (None when nothing was wrong)."""
    best = run_dir / "best.json"
    if not best.exists():
        return best_acc, None
    try:
        load_checkpoint(best)
        return best_acc, None
    except CheckpointError:
        pass
    prev = run_dir / "best.prev.json"
    try:
        _, prev_meta = load_checkpoint(prev)
    except CheckpointError:
        best.unlink()
        return -1.0, "best.json was damaged and best.prev.json unusable; the next validation writes a new best"
    os.replace(prev, best)
    acc = min(best_acc, prev_meta.get("best_acc", -1.0))
    return acc, f"best.json was damaged; restored best.prev.json (val accuracy {acc:.4f})"
