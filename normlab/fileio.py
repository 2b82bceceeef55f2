"""Atomic file writes and a directory lock, so an interrupted or concurrent run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    The file gets the mode a plain `open(path, "w")` would (0666 less the umask), not mkstemp's
    0600, so result files on a shared filesystem are as readable as the PNGs beside them.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def remove_temp_files(directory: Path) -> None:
    """Remove the temp files of `atomic_write_bytes` that a killed process left in `directory`.
    Call it only while holding the directory's lock, when no other writer can be mid-write."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` or fail with one sentence naming it, instead of a traceback deep in a run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".normlab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
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
    lock_file = open(path / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(path) from None
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        yield
    finally:
        lock_file.close()


def check_unlocked(path: Path) -> None:
    """Fail as `directory_lock` would if another process holds `path`, without writing anything."""
    lock = Path(path) / ".lock"
    if not lock.is_file():
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
