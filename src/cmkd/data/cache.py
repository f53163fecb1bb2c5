"""Prepared datasets: every image decoded and resized once into a uint8 array on disk.

A format adapter (CUB, image folder, ...) lists a dataset as a :class:`Listing`; ``prepare``
decodes it with all cores into ``images.npy`` + ``captions.json`` + ``meta.json``. The
meta file carries a fingerprint of the inputs (paths, sizes, modification times, options),
so preparing again with unchanged inputs does nothing and a changed file is detected.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmkd.data.dataset import SPLITS, DatasetError, FewShotDataset
from cmkd.data.images import ImageError, load_image

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One image of a dataset: its file, class, captions and optional crop box (x, y, w, h)."""

    path: Path
    class_name: str
    captions: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None


@dataclass
class Listing:
    """What a format adapter found on disk, before any image is decoded."""

    name: str
    format: str
    records: list[Record]
    classes: list[str]
    groups: dict[str, str]
    splits: dict[str, list[str]]
    extra_inputs: list[Path] = field(default_factory=list)  # caption and index files, for the fingerprint
    warnings: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        known = set(self.classes)
        for split, names in self.splits.items():
            if split not in SPLITS:
                raise DatasetError(f"{self.name}: unknown split '{split}'; use {', '.join(SPLITS)}")
            unknown = sorted(set(names) - known)
            if unknown:
                raise DatasetError(f"{self.name}: split '{split}' names classes that have no images: {unknown[:5]}")
        used = [c for names in self.splits.values() for c in names]
        if len(used) != len(set(used)):
            raise DatasetError(f"{self.name}: a class appears in more than one split")


def fingerprint(listing: Listing, size: int) -> str:
    """Digest of everything that determines the prepared arrays."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "size": size, "format": listing.format, "options": listing.options,
                         "splits": listing.splits, "groups": listing.groups}, sort_keys=True).encode())
    for r in listing.records:
        st = r.path.stat()
        h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}|{r.class_name}|{r.bbox}|{r.captions}\n".encode())
    for p in sorted(listing.extra_inputs):
        if p.exists():
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(job: tuple[str, int, int, tuple | None]) -> tuple[np.ndarray | None, str | None]:
    path, channels, size, box = job
    try:
        return load_image(path, channels, size, box), None
    except ImageError as err:
        return None, str(err)


def prepare(listing: Listing, out: str | Path, size: int, channels: int = 3, workers: int | None = None,
            skip_bad: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """Decode ``listing`` into ``out`` unless it is already prepared from the same inputs.

    Returns the folder and whether anything was (re)built. A bad image stops the run with the
    file's name, or with ``skip_bad`` is left out and listed in ``meta.json``.
    """
    listing.check()
    out = Path(out)
    digest = fingerprint(listing, size)
    meta_path = out / "meta.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        if old.get("fingerprint") == digest and (out / "images.npy").exists():
            return out, False
    jobs = [(str(r.path), channels, size, r.bbox) for r in listing.records]
    out.mkdir(parents=True, exist_ok=True)
    # decoded rows stream into a memory-mapped file: a dataset larger than RAM prepares too
    scratch = out / ".images.npy.tmp"
    images = np.lib.format.open_memmap(scratch, "w+", np.uint8, (len(jobs), channels, size, size))
    bad: list[str] = []
    keep: list[int] = []
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = pool.map(_decode, jobs, chunksize=64)
        for i, (arr, err) in enumerate(tqdm(results, total=len(jobs), desc=f"prepare {listing.name}",
                                            disable=not progress, unit="img")):
            if err is None:
                images[len(keep)] = arr  # compacted as it goes: bad images leave no hole
                keep.append(i)
            elif skip_bad:
                bad.append(err)
            else:
                del images
                scratch.unlink(missing_ok=True)
                raise ImageError(f"{err} (or run prepare with --skip-bad to leave it out)")
    images.flush()
    del images
    _truncate_rows(scratch, len(keep))
    os.replace(scratch, out / "images.npy")
    class_index = {c: k for k, c in enumerate(listing.classes)}
    labels = [class_index[listing.records[i].class_name] for i in keep]
    captions = [list(listing.records[i].captions) for i in keep]
    (out / "captions.json").write_text(json.dumps({"labels": labels, "captions": captions,
                                                   "files": [str(listing.records[i].path) for i in keep]}))
    meta = {"name": out.name, "source": listing.name, "format": listing.format, "size": size, "channels": channels,
            "fingerprint": digest, "classes": listing.classes,
            "groups": [listing.groups.get(c, c) for c in listing.classes],
            "splits": {k: [class_index[c] for c in v] for k, v in listing.splits.items()},
            "images": len(keep), "skipped_bad": bad, "warnings": listing.warnings, "options": listing.options}
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # meta.json last: its presence marks a complete cache
    return out, True


def _truncate_rows(path: Path, rows: int, chunk: int = 4096) -> None:
    """Keep the first ``rows`` rows of a ``.npy`` file (copied in chunks when some were dropped)."""
    src = np.load(path, mmap_mode="r")
    if src.shape[0] == rows:
        return
    tmp = path.with_name(path.name + ".short")
    dst = np.lib.format.open_memmap(tmp, "w+", src.dtype, (rows, *src.shape[1:]))
    for start in range(0, rows, chunk):
        dst[start:start + chunk] = src[start:min(start + chunk, rows)]
    dst.flush()
    del dst, src
    os.replace(tmp, path)


def load_prepared(folder: str | Path, mmap: bool = False) -> FewShotDataset:
    """A prepared dataset as a :class:`FewShotDataset`; with ``mmap`` the images stay on disk
    (copy-on-write memory map) until touched, e.g. to list counts."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder} is not a prepared dataset (no meta.json); run `cmkd prepare` first")
    fix = f"prepare it again (cmkd prepare ... --out {folder})"
    current = meta_path
    try:
        meta = json.loads(meta_path.read_text())
        current = folder / "captions.json"
        caps = json.loads(current.read_text())
        current = folder / "images.npy"
        images = torch.from_numpy(np.load(current, mmap_mode="c" if mmap else None))
        return FewShotDataset(name=meta["name"], images=images,
                              labels=torch.tensor(caps["labels"], dtype=torch.long),
                              class_names=meta["classes"], groups=meta["groups"],
                              captions=[tuple(c) for c in caps["captions"]], splits=meta["splits"],
                              meta={"source": str(folder), "format": meta["format"], "image_size": meta["size"],
                                    "channels": meta["channels"]}, files=caps["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{current} cannot be used ({type(err).__name__}: {err}); {fix}") from None
