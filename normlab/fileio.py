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

from .errors import NormlabError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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


@contextlib.contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path/.lock` so two runs cannot write the same directory."""
    path = ensure_writable_dir(path)
    lock_file = open(path / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NormlabError(
                f"another normlab process is already writing {path}; wait for it to finish "
                "or use a different --out."
            ) from None
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        yield
    finally:
        lock_file.close()
