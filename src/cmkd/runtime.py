"""Process-level settings: threads, the glibc allocator, devices, provenance."""

from __future__ import annotations

import ctypes
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def configure_cpu(threads: int = 0) -> int:
    """Use ``threads`` intra-op threads (0: the cores shared by the local ``torchrun`` processes)
    and keep freed tensor memory in the heap.

    glibc returns large buffers to the OS on every free, and re-faulting them each step was
    measured to cost up to 2x on Conv-4 here; disabling mmap for large blocks and raising
    the trim threshold removes that (DESIGN.md, speed model).
    """
    local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = threads or max(1, (os.cpu_count() or 1) // local_procs)
    torch.set_num_threads(n)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    return n


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the cmkd source tree, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"
