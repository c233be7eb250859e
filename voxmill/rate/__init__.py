"""Rate budgets: the adaptive rate (:mod:`~voxmill.rate.control`), the adaptive in-flight limit
(:mod:`~voxmill.rate.concurrency`) and where tokens come from
(:mod:`~voxmill.rate.sources`: one process, or every process on the machine sharing a key and base URL)."""

from voxmill.rate.concurrency import ConcurrencyControl
from voxmill.rate.control import RateControl
from voxmill.rate.sources import FileSource, Lease, LocalSource, TokenSource

__all__ = ["ConcurrencyControl", "FileSource", "Lease", "LocalSource", "RateControl", "TokenSource"]
