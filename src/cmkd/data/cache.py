"""Prepared datasets: every image decoded and resized once into a uint8 array on disk.

A format adapter (CUB, image folder, ...) lists a dataset as a :class:`Listing`; ``prepare``
decodes it with all cores into ``images.npy`` + ``captions.json`` + ``meta.json``, built in a
private scratch folder and published whole under a lock per name. The meta file carries a
fingerprint of the inputs (every file's content, the options, splits and groups), so preparing
again with unchanged inputs does nothing and any changed file or option is detected.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmkd.config import SPLITS
from cmkd.data.dataset import FewShotDataset
from cmkd.data.images import load_image
from cmkd.errors import DatasetError, ImageError
from cmkd.files import file_sha256, flush_to_disk, open_lock, refuse_link

log = logging.getLogger("cmkd")

FORMAT_VERSION = 2  # 2: the fingerprint covers the channels


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
        seen: dict[str, str] = {}
        for split, names in self.splits.items():
            for c in names:
                if c in seen:
                    raise DatasetError(f"{self.name}: class {c!r} is in both the '{seen[c]}' and the '{split}' split; "
                                       "list each class in one split (splits.json or the split file)")
                seen[c] = split
        for split in SPLITS:
            n = len(self.splits.get(split, []))
            if n < 2:
                by_group = " (splits are drawn by group: give groups.json at least 3 groups)" if \
                    len(set(self.groups.values())) < 3 and self.groups else ""
                raise DatasetError(f"{self.name}: the '{split}' split has {n} class(es); episodes need at least 2 "
                                   f"per split{by_group}. Give every split of {', '.join(SPLITS)} classes")


def fingerprint(listing: Listing, size: int, channels: int) -> str:
    """Digest of everything that determines the prepared arrays: every option and every input file."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": FORMAT_VERSION, "size": size, "channels": channels, "format": listing.format,
                         "options": listing.options, "splits": listing.splits, "groups": listing.groups},
                        sort_keys=True).encode())
    for r in listing.records:
        h.update(f"{r.path}|{file_sha256(r.path)}|{r.class_name}|{r.bbox}|{r.captions}\n".encode())
    for p in sorted(listing.extra_inputs):
        if p.exists():
            h.update(f"{p}|{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _decode(job: tuple[str, int, int, tuple | None]) -> tuple[np.ndarray | None, str | None]:
    path, channels, size, box = job
    try:
        return load_image(path, channels, size, box), None
    except ImageError as err:
        return None, str(err)


#: The files of a prepared cache: a folder holding anything else is not replaced by ``prepare``.
CACHE_FILES = ("images.npy", "captions.json", "meta.json")


def check_options(size: int, channels: int, workers: int | None) -> None:
    if not 8 <= size <= 1024:
        raise DatasetError(f"--size {size}: the image side must be from 8 to 1024 pixels")
    if channels not in (1, 3):
        raise DatasetError(f"--channels {channels}: use 1 (grey) or 3 (RGB)")
    if workers is not None and not 1 <= workers <= 256:
        raise DatasetError(f"--workers {workers}: use from 1 to 256 decoding processes (none: all cores)")


def prepare(listing: Listing, out: str | Path, size: int, channels: int = 3, workers: int | None = None,
            skip_bad: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """Decode ``listing`` into the cache folder ``out`` unless it already holds the same inputs and options.

    Returns the folder and whether anything was (re)built. A bad image stops the run with the file's
    name, or with ``skip_bad`` is left out and listed in ``meta.json``. The cache is built in a private
    scratch folder beside ``out`` and published whole, under a lock per dataset name: a kill or a second
    ``prepare`` of the same name at any moment leaves the old cache or the new one, never a mix.
    """
    check_options(size, channels, workers)
    listing.check()
    out = Path(out)
    refuse_link(out)
    digest = fingerprint(listing, size, channels)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _name_lock(out):
        if _up_to_date(out, digest):
            return out, False
        if out.exists() and (not out.is_dir() or any(p.name not in CACHE_FILES for p in out.iterdir())):
            raise DatasetError(f"{out} exists and is not a cmkd dataset cache (it holds other files); prepare into a "
                               "new or empty folder (--name or --out)")
        scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.prepare."))  # private: mode 0700
        try:
            _build(listing, scratch, out.name, size, channels, workers, skip_bad, progress, digest)
            scratch.chmod(0o777 & ~_umask())
            _publish_folder(scratch, out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # the scratch folder, or the old cache after the swap
    return out, True


def _up_to_date(out: Path, digest: str) -> bool:
    try:
        return json.loads((out / "meta.json").read_text()).get("fingerprint") == digest and \
            (out / "images.npy").is_file()
    except (OSError, ValueError, AttributeError):
        return False


def _build(listing: Listing, folder: Path, name: str, size: int, channels: int, workers: int | None,
           skip_bad: bool, progress: bool, digest: str) -> None:
    jobs = [(str(r.path), channels, size, r.bbox) for r in listing.records]
    # decoded rows stream into a memory-mapped file: a dataset larger than RAM prepares too
    rows = folder / "images.npy"
    images = np.lib.format.open_memmap(rows, "w+", np.uint8, (len(jobs), channels, size, size))
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
                raise ImageError(f"{err} (or run prepare with --skip-bad to leave it out)")
    images.flush()
    del images
    if not keep:
        raise DatasetError(f"{listing.name}: no image could be read ({len(bad)} bad); nothing to prepare")
    _truncate_rows(rows, len(keep))
    class_index = {c: k for k, c in enumerate(listing.classes)}
    labels = [class_index[listing.records[i].class_name] for i in keep]
    captions = [list(listing.records[i].captions) for i in keep]
    (folder / "captions.json").write_text(json.dumps({"labels": labels, "captions": captions,
                                                      "files": [str(listing.records[i].path) for i in keep]}))
    meta = {"name": name, "source": listing.name, "format": listing.format, "size": size, "channels": channels,
            "fingerprint": digest, "classes": listing.classes,
            "groups": [listing.groups.get(c, c) for c in listing.classes],
            "splits": {k: [class_index[c] for c in v] for k, v in listing.splits.items()},
            "images": len(keep), "skipped_bad": bad, "warnings": listing.warnings, "options": listing.options}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    for f in CACHE_FILES:
        flush_to_disk(folder / f)


@contextlib.contextmanager
def _name_lock(out: Path) -> Iterator[None]:
    """One ``prepare`` per dataset name at a time (a lock file beside the cache, never followed if a link)."""
    import fcntl

    with open_lock(out.parent / f".{out.name}.lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another prepare of %s is running; waiting for it", out)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _publish_folder(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out`` in one step; the old cache (if any) ends up at ``new``."""
    if not out.exists():
        os.rename(new, out)
    elif not _exchange(new, out):  # no atomic exchange here: move the old cache aside first
        aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.rename(out, aside / "cache")
        os.rename(new, out)
        os.rename(aside / "cache", new)
        aside.rmdir()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _umask() -> int:
    """The process umask, read without changing it (Linux); the common 022 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


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
        current = meta_path  # what the checks below compare the arrays with
        return FewShotDataset(name=meta["name"], images=images,
                              labels=torch.tensor(caps["labels"], dtype=torch.long),
                              class_names=meta["classes"], groups=meta["groups"],
                              captions=[tuple(c) for c in caps["captions"]], splits=meta["splits"],
                              meta={"source": str(folder), "format": meta["format"], "image_size": meta["size"],
                                    "channels": meta["channels"]}, files=caps["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{current} cannot be used ({type(err).__name__}: {err}); {fix}") from None
