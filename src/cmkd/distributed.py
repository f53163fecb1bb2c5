"""Several processes (``torchrun``): who this process is, sharding and gathering.

Training runs as one process per device under ``torchrun``; each rank draws its own
episodes and DistributedDataParallel averages the gradients. Evaluation episodes are
split into contiguous shards and the per-episode results gathered back in order, so a
reported accuracy is always over the whole fixed list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cmkd.runtime import pick_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str | None = None) -> torch.device:
    """Join the process group when launched by ``torchrun`` and pick this rank's device.

    NCCL on GPUs (one per local rank), gloo on CPUs. A single process gets ``device``
    or CUDA when available.
    """
    if not launched():
        return pick_device(device)
    local = int(os.environ["LOCAL_RANK"])
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", local) if use_cuda else torch.device("cpu")


def ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def shard(count: int, r: Ranks | None = None) -> slice:
    """This rank's contiguous share of ``count`` items (the first ranks take one more when uneven)."""
    r = r or ranks()
    base, extra = divmod(count, r.world)
    start = r.rank * base + min(r.rank, extra)
    return slice(start, start + base + (r.rank < extra))


def gather(part: np.ndarray) -> np.ndarray:
    """Every rank's ``part`` concatenated in rank order (the identity for one process)."""
    r = ranks()
    if r.world == 1:
        return part
    parts: list = [None] * r.world
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each forward, so after a step every rank holds its own
    statistics; evaluation and checkpoints must all use rank 0's.
    """
    if ranks().world > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier() -> None:
    if ranks().world > 1:
        dist.barrier()


def teardown(clean: bool = True) -> None:
    """Leave the process group.

    After a clean run every rank first waits for the others, so that none closes its
    connections while a peer still uses them (gloo then aborts the peer). After an error
    a rank leaves at once: the others may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            barrier()
        dist.destroy_process_group()
