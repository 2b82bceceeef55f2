"""What trained an epoch: the code, the device and the process x thread layout.

Each experiment keeps a list of these records over its epochs (one entry per stretch of epochs
trained alike), so a result can say which code and which machine layout produced it, and a study
whose code changed between resumes shows it. The code version is a hash of normlab's own source
files: it changes whenever the code that trains changes, in a git checkout or an installed wheel.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<version>+src.<12 hex>`: normlab's version and a hash of every .py and preset file it ships."""
    try:
        version = importlib.metadata.version("normlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    digest = hashlib.sha256()
    for path in sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return f"{version}+src.{digest.hexdigest()[:12]}"


def layout_entry(device: str, threads: int, executor: str = "local", processes: int = 1, members: int = 1) -> dict:
    """One epoch's record: code, device, executor, processes training side by side (0: not known,
    as under Ray), torch threads in this process, and models trained as one (members > 1: the
    grouped, vmapped step)."""
    return {"code": code_version(), "device": device, "executor": executor, "processes": int(processes),
            "threads": int(threads), "members": int(members)}


def extend(provenance: list[dict], epoch: int, entry: dict) -> list[dict]:
    """`provenance` with `epoch` added: to the last stretch when trained alike, else a new stretch."""
    out = [dict(p) for p in provenance]
    if out and out[-1]["last_epoch"] == epoch - 1 and {k: out[-1].get(k) for k in entry} == entry:
        out[-1]["last_epoch"] = epoch
    else:
        out.append({"first_epoch": epoch, "last_epoch": epoch, **entry})
    return out


def valid(provenance) -> bool:
    """A provenance list as checkpoints store it (absent from files written before it existed)."""
    return isinstance(provenance, list) and all(
        isinstance(p, dict) and isinstance(p.get("first_epoch"), int) and isinstance(p.get("last_epoch"), int)
        and isinstance(p.get("code"), str) and isinstance(p.get("device"), str) for p in provenance)
