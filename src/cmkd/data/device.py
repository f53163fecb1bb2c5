"""A dataset placed for training, and the model inputs gathered from it.

Two placements:

- ``device``: the uint8 images live on the training device; an episode is an index
  tensor and gathering, converting and augmenting happen there.
- ``host``: for datasets larger than the device (tieredImageNet at 84 px is ~16 GB), the
  images stay in host memory, usually a memory map of the prepared cache. Each request
  gathers its rows on the host into pinned memory and copies them over asynchronously;
  the trainer asks for the next step's rows in advance, so a background thread gathers
  them while the current step computes.

``auto`` picks ``device`` when the images take at most half of the device's free memory.
Captions are turned into each text encoder's input once and kept on the device
(:mod:`cmkd.models.inputs` gathers a model's inputs from here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from cmkd.data.augment import random_affine, to_float
from cmkd.data.dataset import FewShotDataset
from cmkd.data.text import CaptionTable
from cmkd.errors import ConfigError

Indices = np.ndarray | torch.Tensor


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (host RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_placement(requested: str, image_bytes: int, free_bytes: int) -> str:
    """``requested`` unless it is ``auto``: then ``device`` when the images take at most half the free memory."""
    if requested != "auto":
        return requested
    return "device" if image_bytes <= free_bytes // 2 else "host"


def _as_numpy(idx: Indices) -> np.ndarray:
    return np.ascontiguousarray(idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)


def upload(idx: Indices, device: torch.device) -> torch.Tensor:
    """Indices as a tensor on ``device``; from the host through pinned memory, so the host does
    not wait for the device to finish its queued work (a plain copy would)."""
    if isinstance(idx, torch.Tensor):
        return idx.to(device)
    rows = torch.from_numpy(_as_numpy(idx))
    if device.type != "cuda":
        return rows
    return rows.pin_memory().to(device, non_blocking=True)


class HostImages:
    """uint8 images in host memory, gathered per request and copied to ``device``.

    ``prefetch(idx)`` starts gathering ``idx`` in a background thread; a later
    ``gather`` of the same indices takes that result (``hits`` counts them).
    """

    def __init__(self, images: torch.Tensor, device: torch.device) -> None:
        self.images = images
        self.device = device
        self.pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cmkd-prefetch")
        self._next: tuple[bytes, Future] | None = None
        self.hits = 0

    def _load(self, idx: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(idx), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin)
        return torch.index_select(self.images, 0, torch.from_numpy(idx), out=out)

    def prefetch(self, idx: Indices) -> None:
        rows = _as_numpy(idx)
        self._next = (rows.tobytes(), self._pool.submit(self._load, rows))

    def gather(self, idx: Indices) -> torch.Tensor:
        rows = _as_numpy(idx)
        if self._next is not None and self._next[0] == rows.tobytes():
            host, self._next = self._next[1].result(), None
            self.hits += 1
        else:
            host = self._load(rows)
        return host.to(self.device, non_blocking=self.pin)


class DeviceData:
    """``dataset`` placed for training on ``device``: images, labels and per-text-encoder caption tables."""

    def __init__(self, dataset: FewShotDataset, device: torch.device | str = "cpu", placement: str = "device") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        image_bytes = dataset.images.numel() * dataset.images.element_size()
        self.placement = choose_placement(placement, image_bytes, free_memory(self.device) if placement == "auto"
                                          else 0)
        if self.placement == "device":
            self.images: torch.Tensor | None = dataset.images.to(self.device)
            self.host: HostImages | None = None
        elif self.placement == "host":
            self.images, self.host = None, HostImages(dataset.images, self.device)
        else:
            raise ConfigError(f"data.placement={placement!r}; choose auto, device or host")
        self.labels = dataset.labels.to(self.device)
        self._tables: dict[object, CaptionTable] = {}

    def caption_table(self, key: object, prepare: Callable[[list[str]], torch.Tensor]) -> CaptionTable:
        """The captions turned into encoder inputs by ``prepare``, built once per ``key`` and kept on
        the device (encoders that take the same inputs share one table; a text key shares the dataset's)."""
        if key not in self._tables:
            table = (self.dataset.caption_table(key, prepare) if isinstance(key, str)
                     else CaptionTable.build(self.dataset.captions, prepare, self.dataset.files))
            self._tables[key] = table.to(self.device)
        return self._tables[key]

    def upload(self, idx: Indices) -> torch.Tensor:
        return upload(idx, self.device)

    def gather(self, idx: Indices) -> torch.Tensor:
        """uint8 images ``idx`` on the device."""
        if self.host is not None:
            return self.host.gather(idx)
        assert self.images is not None
        return self.images[self.upload(idx)]

    def prefetch(self, idx: Indices) -> None:
        """Announce the next ``gather``: the host placement starts it in the background."""
        if self.host is not None:
            self.host.prefetch(idx)

    def images_for(self, idx: Indices, augment: bool = False, generator: torch.Generator | None = None,
                   hflip: bool = False) -> torch.Tensor:
        x = to_float(self.gather(idx))
        return random_affine(x, generator, hflip=hflip) if augment else x
