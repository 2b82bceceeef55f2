"""Atomic file writes and a directory lock, so an interrupted or concurrent run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import NormlabError, os_error_fix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cannot_write(path: Path, error: OSError) -> NormlabError:
    """One sentence for a failed write, naming the path, the reason and the fix (by the reason)."""
    return NormlabError(f"cannot write {path} ({error.strerror or error}); {os_error_fix(error)}.")


def kind_of(path: Path) -> str | None:
    """What is at `path` itself (a link is not followed): None when nothing, "file" for a regular
    file, "directory", "symbolic link" or "special file" (a FIFO, socket or device)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a file where a folder on its path should be: nothing can be here
        return None
    except OSError:
        return "special file"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


class NotAFileError(NormlabError, OSError):
    """A path normlab would read or write is a symbolic link or a special file, not a file it wrote."""

    def __init__(self, path: Path, kind: str):
        self.kind = kind
        super().__init__(f"{path} is a {kind}, not a file normlab wrote; move it away (normlab never reads, "
                         "writes or deletes through a link or into a special file), then run again.")


def safe_read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of the regular file at `path`, never following a symbolic link and never waiting on
    a FIFO or device (opened non-blocking, checked to be a regular file before anything is read).
    FileNotFoundError when absent, NotAFileError for a link or special file; with `limit`, a file
    larger than that is a ValueError, read no further."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno in (getattr(os, "ELOOP", 40), 40):
            raise NotAFileError(path, "symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(path, "directory" if stat.S_ISDIR(st.st_mode) else "special file")
        if limit is not None and st.st_size > limit:
            raise ValueError(f"{path} is {st.st_size:,} bytes, more than the {limit:,} it may be")
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path} is more than the {limit:,} bytes it may be")
    return data


def _refuse_non_file(path: Path) -> None:
    kind = kind_of(path)
    if kind not in (None, "file"):
        raise NotAFileError(path, kind)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    The file gets the mode a plain `open(path, "w")` would (0666 less the umask), not mkstemp's
    0600, so result files on a shared filesystem are as readable as the PNGs beside them.
    """
    path = Path(path)
    _refuse_non_file(path)  # a link or a FIFO in a result file's place is not replaced: it is not ours
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.normlab-", suffix=".tmp")
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise cannot_write(path, e) from None
        raise


# the names atomic_write_bytes gives its temp files: "." + a result file's name + ".normlab-" + mkstemp's
# 8 characters + ".tmp"; the marker keeps a user's own ".<name>.<something>.tmp" out of the sweep
TEMP_NAME = re.compile(r"\.(?:[A-Za-z0-9_-]+\.(?:json|csv|md|png|pt))\.normlab-[A-Za-z0-9_]{8}\.tmp")


def remove_temp_files(directory: Path) -> None:
    """Remove the temp files of `atomic_write_bytes` that a killed process left in `directory`:
    regular files with the names it gives them, nothing else. Call it only while holding the
    directory's lock, when no other writer can be mid-write."""
    directory = Path(directory)
    if kind_of(directory) != "directory":
        return
    for tmp in directory.iterdir():
        if TEMP_NAME.fullmatch(tmp.name) and kind_of(tmp) == "file":
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


MAX_JSON_BYTES = 256 * 2**20  # far above any JSON file normlab writes


def read_json(path: Path) -> Any:
    """The JSON in `path`, read in bounded memory; ValueError for a file too large or not JSON."""
    try:
        return json.loads(safe_read_bytes(path, limit=MAX_JSON_BYTES).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply to be a file normlab wrote)") from None


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` or fail with one sentence naming it, instead of a traceback deep in a run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".normlab-write-test.")  # O_EXCL: a new file, ours
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NormlabError(
            f"cannot write to output directory {path} ({e.strerror}); choose another with --out."
        ) from None
    return path


def _busy(path: Path) -> NormlabError:
    return NormlabError(f"another normlab process is already writing {path}; wait for it to finish "
                        "or use a different --out.")


@contextlib.contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path/.lock` so two runs cannot write the same directory."""
    path = ensure_writable_dir(path)
    lock_file = _open_lock(path / ".lock")
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(path) from None
        lock_file.truncate(0)
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        yield
    finally:
        lock_file.close()


def _open_lock(lock: Path):
    """The lock file, created or opened as a regular file: never through a link, never a FIFO."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(lock, flags, 0o666)
    except OSError as e:
        if e.errno == getattr(os, "ELOOP", 40):
            raise NotAFileError(lock, "symbolic link") from None
        raise cannot_write(lock, e) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAFileError(lock, "special file")
    return os.fdopen(fd, "r+")


def check_unlocked(path: Path) -> None:
    """Fail as `directory_lock` would if another process holds `path`, without writing anything."""
    lock = Path(path) / ".lock"
    if kind_of(lock) != "file":
        return
    try:
        with open(lock, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(Path(path)) from None
    except OSError:
        pass  # unreadable lock file: the real run will say why it cannot write there


def check_can_create(path: Path) -> None:
    """Fail if `path` could not be created and written, without creating it (for --dry-run)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NormlabError(f"cannot write to output directory {path} ({probe} is not a directory); "
                           "choose another with --out.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NormlabError(f"cannot write to output directory {path} (Permission denied); "
                           "choose another with --out.")
