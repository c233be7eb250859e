"""The flow's final state from a run summary: never Completed with silent failures."""

from __future__ import annotations

from prefect.states import Completed, Failed, State

from voxmill.jobs import RunSummary


def summary_state(summary: RunSummary) -> State:
    """Completed when every item is done; Failed with the counts (and the summary as data) otherwise."""
    if summary.ok:
        return Completed(message=summary.headline(), data=summary)
    return Failed(message=summary.headline(), data=summary)
