"""A group's epoch from files to files: several Experiments trained by one `GroupStep`.

The loop and the step are `normlab.training`'s; this lands each member's outcome in its own
files — its epoch (`Experiment.land`), or its divergence with its last good epoch kept
(`Experiment.diverged`) — so resume, reports and divergence see nothing different from a
separate run. A member that diverges leaves the group; the rest go on.
"""

from __future__ import annotations

from collections.abc import Generator

from .errors import DivergedError
from .experiment import Experiment
from .training.group import GroupStep
from .training.loop import EpochMetrics, epoch_steps, take_turns

Landed = dict[str, EpochMetrics | DivergedError]  # member's directory name -> its epoch


class GroupedEpoch:
    """A fixed line-up of slots — an Experiment that trains, or None — and the `GroupStep` over
    their states; kept from epoch to epoch while the same members train."""

    def __init__(self, slots: list[Experiment | None], graph: bool = False, contiguous: bool | None = None):
        self.slots = list(slots)
        self.step = GroupStep([m.state if m is not None else None for m in self.slots], graph, contiguous)

    @property
    def members(self) -> list[Experiment]:
        """The experiments that train, in slot order."""
        return [m for m in self.slots if m is not None]

    def epoch_steps(self) -> Generator[None, None, Landed]:
        """The members' next epoch, a step per turn (`take_turns`), each member's outcome landed in its files."""
        first = self.members[0]
        state = first.state
        outcome = yield from epoch_steps(self.step, first.epoch + 1, state.slices, state.data,
                                         state.recorder is not None)
        landed: Landed = {}
        training = self.step.training()  # the members that trained to the end of the epoch's steps
        for k, result in sorted(outcome.items()):
            m = self.slots[k]
            if isinstance(result, DivergedError):
                m.diverged(result)
                if k not in training:  # retired mid-epoch: a placeholder in the step from now on
                    self.slots[k] = None
            else:
                m.land(result, members=len(training))
            landed[m.cfg.dirname] = result
        return landed


def run_together(groups: list[GroupedEpoch]) -> list[Landed | Exception]:
    """One epoch of each group, their steps taking turns (on CUDA each on its own stream)."""
    return take_turns([(group.step, group.epoch_steps()) for group in groups])
