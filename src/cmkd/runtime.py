"""Process-level settings: threads, the glibc allocator, devices, precision, provenance."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from cmkd.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def configure_cpu(threads: int = 0) -> int:
    """Use ``threads`` intra-op threads (0: the cores shared by the local ``torchrun`` processes)
    and keep freed tensor memory in the heap.

    glibc returns large buffers to the OS on every free, and re-faulting them each step was
    measured to cost up to 2x on Conv-4 here; disabling mmap for large blocks and raising
    the trim threshold removes that.
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


def seed_for(seed: int, purpose: str, index: int = 0) -> int:
    """The one way cmkd derives a seed: from the run's ``seed``, what it is for (``purpose``, e.g.
    ``"step"``, ``"episodes"``, ``"validation"``) and an ``index`` (the step, the epoch), hashed by
    numpy's ``SeedSequence``. Different purposes and indices give independent streams, and a
    resumed run derives exactly the seeds an uninterrupted one would."""
    state = np.random.SeedSequence([seed, zlib.crc32(purpose.encode()), index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))  # 63 bits: a valid torch seed


def pick_device(name: str | None = None) -> torch.device:
    """The device named (``cpu``, ``cuda``, ``cuda:1``), checked to exist here; by default CUDA when available."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: cmkd runs on cpu or cuda")
    return device


def source_commit(package_dir: str | Path | None = None) -> str | None:
    """The git commit of a cmkd *checkout* the package runs from (``-dirty`` when modified), else None.

    Only a repository whose ``src/cmkd`` is this package counts: a cmkd installed into a
    virtual environment that happens to sit inside some other git repository records no
    commit (that repository's HEAD says nothing about cmkd).
    """
    package = Path(package_dir or Path(__file__).parent).resolve()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "src" / "cmkd" != package:
        return None
    head = git("rev-parse", "HEAD")
    if head is None:
        return None
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def device_name(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model name and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that supports it, else fp32 (bf16 was slower than fp32 on the
    development CPU, which lacks bf16 instructions)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (a resolved one) on ``device``; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


@lru_cache(maxsize=8)
def _provenance(device: str) -> tuple[tuple[str, str | None], ...]:
    from cmkd.version import __version__

    return (("cmkd", __version__), ("git_commit", source_commit()), ("torch", torch.__version__),
            ("python", platform.python_version()), ("device", device_name(device)),
            ("cpu_capability", torch.backends.cpu.get_cpu_capability()))


def provenance(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """What produced a result: cmkd's version (and commit when run from a cmkd checkout), the torch
    build, Python, the device and the CPU's vector kernels (``AVX2``, ``AVX512``, ...: two CPUs of one model
    name can round differently). Per-episode accuracies are bit-identical only when all of these match."""
    return dict(_provenance(str(torch.device(device))))


def provenance_line(p: dict[str, str | None]) -> str:
    """``provenance()`` as one readable line."""
    sha = p.get("git_commit") or ""
    commit = f" (commit {sha[:12]}{'-dirty' if sha.endswith('-dirty') else ''})" if sha else ""
    return f"cmkd {p['cmkd']}{commit}, torch {p['torch']}, Python {p['python']}, {p['device']}"


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int | None = None, state: RNGState | None = None) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` (or set to ``state``, from :func:`rng_state`) inside the block, and
    the caller's RNG state restored after it: the library draws reproducibly and leaves the process as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        if state is not None:
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state(state[1], device)
        elif seed is not None:
            seed_device(device, seed)
        else:
            raise ValueError("forked_rng needs a seed or a state")
        yield


def seed_device(device: torch.device, seed: int) -> None:
    """The CPU generator and ``device``'s seeded with ``seed``: the streams ``torch.manual_seed`` gives, without
    its cost per call (85–350 µs measured on 2-core CPUs, as much as 5% of a text student's step: it records a
    stack trace for every lazily initialised accelerator) and without touching other devices' generators."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


RNGState = tuple[torch.Tensor, torch.Tensor | None]


def rng_state(device: torch.device) -> RNGState:
    """The global RNG state of the CPU and, on a GPU, of ``device`` (to continue a stream later)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None
