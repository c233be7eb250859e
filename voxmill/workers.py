"""How a batch reaches a batch engine, in whichever process a task runner runs it.

The process that opens a job builds its engine (with the job's live progress board) and hands tasks an
:class:`EngineHandle`. In that process (a thread pool) the handle is the engine itself. Sent to another
process (a process pool, a Dask worker), the handle pickles as its :class:`EngineSpec` — plain, picklable
settings — and the first batch there builds one engine for the whole process from it: one event loop,
one HTTP client, one limiter per worker process, its own journal file in the job's ledger. Nothing is
registered anywhere: any process can build the engine from the spec it was sent.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass

from voxmill.batch import BatchEngine, JobSpec
from voxmill.ledger import Ledger
from voxmill.settings import Settings


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to build a job's engine in another process (the key travels as its recipe)."""

    settings: Settings
    job: JobSpec
    run_id: str
    flow_run_id: str | None = None


class EngineHandle:
    """A job's engine: the live one in the process that opened the job, else built from the spec."""

    __slots__ = ("spec", "_local")

    def __init__(self, spec: EngineSpec, local: BatchEngine | None = None) -> None:
        self.spec = spec
        self._local = local

    def __reduce__(self) -> tuple[type[EngineHandle], tuple[EngineSpec]]:
        return (EngineHandle, (self.spec,))  # the live engine stays home

    def __repr__(self) -> str:
        return f"EngineHandle(run {self.spec.run_id})"

    @property
    def is_local(self) -> bool:
        """Whether this is the live engine of the process that opened the job."""
        return self._local is not None

    def engine(self) -> BatchEngine:
        """The engine for this process: the live one, or this process's own (built on first use)."""
        if self._local is not None:
            return self._local
        return _worker_engine(self.spec)


_worker_engines: dict[str, BatchEngine] = {}
_worker_lock = threading.Lock()


def _worker_engine(spec: EngineSpec) -> BatchEngine:
    """One engine per (process, run): the per-process cache that makes "built once per worker" true."""
    with _worker_lock:
        engine = _worker_engines.get(spec.run_id)
        if engine is None:
            # worker journals are named by pid; the process holding the job's lock compacts them
            ledger = Ledger(spec.job.out_dir, run_id=spec.run_id, writer=f"w{os.getpid()}")
            engine = BatchEngine(spec.settings, spec.job, ledger, flow_run_id=spec.flow_run_id)
            engine.start()
            _worker_engines[spec.run_id] = engine
            atexit.register(_close_worker_engine, spec.run_id)
        return engine


def _close_worker_engine(run_id: str) -> None:
    with _worker_lock:
        engine = _worker_engines.pop(run_id, None)
    if engine is not None:
        engine.close()
        engine.ledger.close()


__all__ = ["EngineHandle", "EngineSpec"]
