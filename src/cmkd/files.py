"""Writing files without following links, and publishing them whole.

A run folder or dataset cache may sit in a shared directory (``out=/tmp/...``, ``$CMKD_DATA``), where
another user could plant a symbolic link under a name cmkd writes, to make it truncate or overwrite
a file of theirs. So every file cmkd creates is first written to a scratch file with a random name,
created exclusively (``O_EXCL | O_NOFOLLOW``: a planted link or file makes the creation fail), and
then published by ``os.replace``, which replaces a directory entry and never writes through it. An
existing entry that is a link is refused with an error naming it. Files get the usual mode (0666
less the umask).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from cmkd.errors import OutputFolderError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def refuse_link(path: Path) -> None:
    """An error when ``path`` is a symbolic link: cmkd never writes through one."""
    if path.is_symlink():
        raise OutputFolderError(f"{path} is a symbolic link; cmkd does not write through links (one planted in a "
                                "shared folder could redirect the write). Remove it, or write somewhere else")


def new_file(folder: Path, stem: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty file in ``folder`` that nobody can have planted: ``(fd, path)``."""
    for _ in range(100):
        path = folder / f".{stem}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, _CREATE, 0o666), path
        except FileExistsError:
            continue
    raise OutputFolderError(f"cannot create a scratch file in {folder}")


@contextlib.contextmanager
def scratch_for(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A new scratch file beside ``path`` (removed if the block fails); publish it with :func:`publish`."""
    refuse_link(path)
    fd, tmp = new_file(path.parent, path.name, suffix)
    os.close(fd)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flush_to_disk(path: Path) -> None:
    """``fsync`` a finished file (not through a link) before it is published."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path, sync: bool = True) -> None:
    """Move the finished ``tmp`` to ``path`` in one step (after flushing it to disk when ``sync``)."""
    refuse_link(path)
    if sync:
        flush_to_disk(tmp)
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes | str | Callable[[Path], object], sync: bool = True) -> Path:
    """Write ``path`` whole or not at all: bytes, text, or ``data(tmp)`` writing the scratch file itself."""
    try:
        with scratch_for(path) as tmp:
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
            publish(tmp, path, sync)
    except OSError as err:
        raise OutputFolderError(f"cannot write {path} ({err.strerror or err}); free space or fix the folder, then "
                                "run again (a training run continues with --resume)") from None
    return path


def open_append(path: Path) -> IO[str]:
    """``path`` opened for appending text, created if missing, refused if it is a link."""
    refuse_link(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        raise OutputFolderError(f"cannot append to {path} ({err.strerror}); remove it or write elsewhere") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def open_lock(path: Path) -> IO[str]:
    """``path`` opened read-write for a lock (created if missing), never through a link."""
    refuse_link(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except IsADirectoryError:
        raise OutputFolderError(f"{path} is a folder, not a lock file; remove it") from None
    except OSError as err:
        raise OutputFolderError(f"cannot open the lock {path} ({err.strerror}); remove it") from None
    return os.fdopen(fd, "r+", encoding="utf-8")
