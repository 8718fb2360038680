"""Files users keep (the allocation file, stack files), written so that no crash or race loses them.

- `atomic_write`: the new text goes to a temporary file in the same folder, is flushed to disk (fsync),
  renamed over the old file (atomic on POSIX), and the folder is synced, so a reader (or a crash at any
  moment) sees either the whole old file or the whole new one, never an empty or partial one.
- `locked`: an exclusive `fcntl.flock` on `<file>.lock` for a whole read-modify-write, so two renders of
  the same class run one after the other instead of handing the same slot to two students.

Errors become one line naming the file (FileWriteError), never a traceback.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .spec import SpecError


class FileWriteError(SpecError):
    """A file could not be written or locked; one line naming it and why."""


# Test seam: called before every durable step of a write with (step, path); crash tests stop the write here.
step_hook = None


def _step(name: str, path: Path) -> None:
    if step_hook is not None:
        step_hook(name, path)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def atomic_write(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """Replace `path` with `text` atomically (temp file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                _step("write", path)
                fh.write(text)
                fh.flush()
                _step("fsync", path)
                os.fsync(fh.fileno())
            os.chmod(tmp_name, mode)
            _step("rename", path)
            os.replace(tmp_name, path)
            tmp_name = None
            _step("fsync-dir", path)
            _fsync_dir(folder)
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
    except OSError as exc:
        raise FileWriteError([f"{path}: cannot write ({_reason(exc)}); nothing was changed in it"]) from None
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some file systems do not let a folder be opened; the rename is still atomic
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


_held = threading.local()  # lock paths this thread holds, with a count (the lock is re-entrant per thread)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock for `path` (on `<path>.lock`, kept on disk) until the block ends.

    Waits for another holder (another process, or another thread here: e.g. a second `classroom render` of
    the same class) to finish. The thread that holds it may take it again (save_allocation inside render).
    """
    lock = lock_path(path)
    key = str(lock.resolve())
    counts = _held.__dict__.setdefault("counts", {})
    if counts.get(key):
        counts[key] += 1
        try:
            yield lock
        finally:
            counts[key] -= 1
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FileWriteError([f"{lock}: cannot create the lock file ({_reason(exc)}); is the folder writable?"]) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        counts[key] = 1
        yield lock
    finally:
        counts.pop(key, None)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
