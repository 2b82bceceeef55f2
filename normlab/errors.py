"""The exceptions a user can act on; the CLI prints each as one sentence and exits non-zero."""

from __future__ import annotations

import errno
import sys
from typing import Any


def notice(message: str) -> None:
    """A repair or a note the user should see even with --quiet, on stderr, one line."""
    print(f"normlab: {message}", file=sys.stderr, flush=True)


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut at a word (with '...') when longer than
    `limit`, or the exception's type when it has no message: a sentence never ends mid-word."""
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else type(error).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return f"{cut}..."


def os_error_fix(error: OSError) -> str:
    """What to do about a refused file operation, by its cause."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that disk (or choose another location), then run again with --resume"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make it writable, or choose another location"
    return "check the path, the disk and its permissions, then run again"


class NormlabError(Exception):
    """A problem with the user's input, data, files or environment, stated with its fix."""


class ConfigError(NormlabError, ValueError):
    """A bad setting. Worded for Python (`groups=3 ...`); `for_cli()` words it as a flag (`--groups 3 ...`).

    `problem` holds `{setting}` where the setting is named, so one sentence serves both callers.
    """

    def __init__(self, setting: str, value: Any, problem: str):
        self.setting, self.value, self.problem = setting, value, problem
        super().__init__(problem.format(setting=f"{setting}={value!r}"))

    def for_cli(self) -> str:
        flag = "--" + self.setting.replace("_", "-")
        value = " ".join(map(str, self.value)) if isinstance(self.value, (list, tuple)) else self.value
        return self.problem.format(setting=f"{flag} {value}")


class ArgumentError(NormlabError, ValueError):
    """A bad argument that is not one setting (an unknown study, a malformed grid): a ValueError for Python."""


class DataError(NormlabError):
    """A dataset could not be fetched or verified."""


class DamagedError(NormlabError):
    """A result file that cannot be trusted or rebuilt; the message names the file and the fix."""


class DivergedError(NormlabError):
    """Training produced a non-finite loss; the experiment stops and is recorded as diverged."""

    def __init__(self, epoch: int, message: str):
        super().__init__(message)
        self.epoch = epoch
