"""One exception type for every problem a user can fix; the CLI prints its message as one sentence."""


class NormlabError(Exception):
    """A problem with the user's input, data or environment, stated with its fix."""


class DataError(NormlabError):
    """A dataset could not be fetched or verified."""


class DivergedError(NormlabError):
    """Training produced a non-finite loss; the experiment stops and is recorded as diverged."""

    def __init__(self, epoch: int, message: str):
        super().__init__(message)
        self.epoch = epoch
