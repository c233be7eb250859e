"""The batch engine: send planned items to the API, write their outputs and ledger rows.

One engine per run and process owns one event loop (in a background thread), one HTTP client and one
limiter, so every request of the process shares the same connection pool and the same rate limit,
whichever thread hands it work. :meth:`BatchEngine.run_batch` is blocking and thread-safe: Prefect
tasks (or anything else) call it with a list of items and get counts back; :meth:`BatchEngine.submit_batch`
returns a future instead, so one thread can keep many batches in the engine.

Stopping: a stop (SIGTERM through :mod:`voxmill.shutdown`, a full disk, a refused key) sends no new request
and retries nothing; requests in flight get a bounded grace (none for a full disk: nothing more can be
stored), then are cancelled and left pending, unrecorded, for a rerun.

Never paying twice: before sending, an item's key is looked up in the done index (earlier runs and this
one) and in the set of keys in flight; a duplicate waits for the first and reuses its output.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from voxmill.audio.formats import audio_format
from voxmill.audio.measure import file_peak_dbfs, measure_file
from voxmill.audio.split import split_on_silence, stitch_transcripts
from voxmill.audio.transcode import OutputSpec, partial_path, prepare_asr_input, transcode_file
from voxmill.catalog import ASR_MAX_SECONDS, ValidatedRequest, get_model
from voxmill.errors import AuthError, DiskFull, RateLimited, RunStopped, VoxmillError, disk_full_error, labelled
from voxmill.http import SpeechResult, TranscriptResult, VoxmillClient
from voxmill.identity import content_hash, file_hash
from voxmill.ledger import DoneIndex, Ledger, LedgerRow, utc_now
from voxmill.limiter import AsyncRateLimiter, build_limiter
from voxmill.manifests import JobKind, WorkItem, open_binary
from voxmill.plan import PlannedItem
from voxmill.progress import ProgressBoard
from voxmill.quality import transcript_qc, word_error_rate
from voxmill.settings import Settings
from voxmill.shutdown import on_stop, stop_grace_s
from voxmill.subtitles import TRANSCRIPT_EXTENSIONS, write_transcript_files

log = logging.getLogger(__name__)
T = TypeVar("T")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: WAV bodies up to this size (~1.3 s at 24 kHz) are moved and measured on the loop thread, not in a worker
_INLINE_WRITE_BYTES = 64 * 1024
#: items the engine has started at once (their task made, not yet ended, not waiting out a retry's back-off), per
#: request the in-flight limit allows, plus ``FEED_HEADROOM``: enough to fill every slot the moment it frees, while
#: the rest of the batches handed over wait as plain lists. Without this bound every item of every batch in the
#: engine (16 batches of 200 by default) became a task at once: a CPU burst of thousands of first steps at the
#: start, and thousands of parked coroutines living long enough to reach the oldest GC generation, whose full
#: collections (0.2–0.4 s each, every ~1,000 items) stalled the loop (docs/benchmarks.md, issue 13). 4 + 256, not
#: 2 + 64: after a 429 burst every retry comes due at once, and first tries must be ready beside them. (The chaos
#: run's low rate between bursts, once blamed on this bound, was killed runs' in-flight share held in the budget
#: file: voxmill/rate/sources.py)
FEED_PER_SLOT = 4
FEED_HEADROOM = 256
#: engines started and not yet closed in this process, under the lock: while any runs, the objects that existed when
#: each started are frozen (:func:`gc.freeze`)
_running_lock = threading.Lock()
_running = 0


def _freeze_gc() -> None:
    """Take the objects of the process so far (its modules, the job's set-up: ~90,000 at a run's start) out of the
    cyclic garbage collector's passes while the engine runs. Each request leaves cyclic garbage (httpx's response
    streams, tenacity's retry state) that only a full collection frees, one every ~1,000 items at 200 req/s, and a
    full pass over every object stalls the loop: 0.1–0.2 s each at 10,000 items, ~2 % of the run. Frozen objects are
    still freed when their count drops; only cycles among them wait for :func:`_thaw_gc`."""
    global _running
    with _running_lock:
        _running += 1
        gc.freeze()


def _thaw_gc() -> None:
    """The last running engine closed: every frozen object is collectable again."""
    global _running
    with _running_lock:
        _running -= 1
        if _running == 0:
            gc.unfreeze()


@dataclass(frozen=True)
class JobSpec:
    """What a run produces and where: kind, output directory, audio output settings."""

    kind: JobKind
    out_dir: Path
    output: OutputSpec = field(default_factory=OutputSpec)
    asr_max_seconds: float = ASR_MAX_SECONDS
    #: brings outputs of earlier runs into ``out_dir`` before they are reused (an output URL's scratch
    #: folder holds only this run's files: :class:`voxmill.bucket.FetchOutputs`); None: they are there
    fetch: Callable[[list[str]], None] | None = None


@dataclass(frozen=True)
class BatchOutcome:
    """Counts for one batch; ``stopped`` when the run was halted (e.g. the key was refused), ``stop_kind`` the
    kind of the error that halted it (``AuthError.kind``)."""

    done: int = 0
    failed: int = 0
    reused: int = 0
    not_attempted: int = 0
    stopped: str | None = None
    stop_kind: str | None = None


def output_stem(item_id: str) -> str:
    """A file name for an item id: the id itself when safe, else a cleaned id plus a short hash."""
    cleaned = _UNSAFE.sub("_", item_id)[:120] or "item"
    if cleaned == item_id:
        return cleaned
    return f"{cleaned}-{content_hash(item_id)[:8]}"


class BatchEngine:
    """Runs batches of planned items for one job; use as a context manager."""

    def __init__(
        self,
        settings: Settings,
        job: JobSpec,
        ledger: Ledger,
        *,
        done_index: DoneIndex | None = None,
        progress: ProgressBoard | None = None,
        flow_run_id: str | None = None,
        client_factory: Callable[[Settings], VoxmillClient] | None = None,
    ) -> None:
        self.settings = settings
        self.job = job
        self.ledger = ledger
        self.progress = progress or ProgressBoard()
        self.flow_run_id = flow_run_id
        self.stop_reason: str | None = None
        self.stop_kind: str | None = None
        self.done_index = done_index if done_index is not None else ledger.done_index()
        self._in_flight: dict[str, asyncio.Future[LedgerRow]] = {}
        self._tasks: set[asyncio.Task[str]] = set()
        self._unsubscribe_stop: Callable[[], None] | None = None
        self._retrying: set[str] = set()
        #: items started and holding a place of the feed (see ``FEED_PER_SLOT``), by label; the places held; the
        #: batches waiting to start their next item (FIFO: True, a place was handed over; False, the run stops)
        self._placed: collections.Counter[str] = collections.Counter()
        self._fed = 0
        self._feed_waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        #: this engine holds the process's objects frozen (:func:`_freeze_gc`) until it closes
        self._frozen = False
        self._client_factory = client_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: VoxmillClient | None = None
        #: the run's limiter (None with a ``client_factory``): its learned rate goes into the progress board
        self.limiter: AsyncRateLimiter | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="voxmill-"))

    # --- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> BatchEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the engine's event loop thread and its HTTP client."""
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="voxmill-engine", daemon=True)
        self._thread.start()
        self._client = self._call(self._make_client())
        self._unsubscribe_stop = on_stop(self.stop)
        _freeze_gc()
        self._frozen = True

    def stop(self, reason: str, grace_s: float | None = None) -> None:
        """Stop the run (thread-safe): nothing new is sent or retried; what is in flight gets ``grace_s``
        (default ``VOXMILL_STOP_GRACE``) to come back and be recorded, then is cancelled, left pending."""
        grace = stop_grace_s() if grace_s is None else grace_s
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._begin_stop, reason, grace)

    def _begin_stop(self, reason: str, grace_s: float) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        assert self._loop is not None
        self._feed_wake()  # batches waiting to start an item: the rest of their items are not attempted
        self._loop.call_later(grace_s, self._cancel_in_flight)

    def _cancel_in_flight(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _make_client(self) -> VoxmillClient:
        if self._client_factory is not None:
            return self._client_factory(self.settings)
        self.limiter = build_limiter(self.settings)
        return VoxmillClient(self.settings, limiter=self.limiter, on_retry=self._on_retry,
                             should_stop=lambda: self.stop_reason)

    def close(self) -> None:
        """Close the client, stop the loop thread, remove scratch files."""
        if self._loop is None:
            return
        if self._unsubscribe_stop is not None:
            self._unsubscribe_stop()
        if self._client is not None:
            self._call(self._client.aclose())
        if self.limiter is not None:
            self.limiter.close()
            self._show_limits(self.limiter)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
        shutil.rmtree(self._scratch, ignore_errors=True)
        if self._frozen:
            self._frozen = False
            _thaw_gc()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "engine not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # --- public -------------------------------------------------------------------------------------

    def run_batch(self, planned: Sequence[PlannedItem]) -> BatchOutcome:
        """Handle every item of ``planned``; blocking, callable from any thread."""
        return self.submit_batch(planned).result()

    def submit_batch(self, planned: Sequence[PlannedItem]) -> concurrent.futures.Future[BatchOutcome]:
        """Hand ``planned`` to the engine's loop and return at once (thread-safe): the future ends with the
        batch's counts. No thread waits on the batch meanwhile, so a batch held up by one item's long back-off
        holds up no other work (:func:`voxmill.jobs.fan_out` keeps several in the engine)."""
        assert self._loop is not None, "engine not started"
        return asyncio.run_coroutine_threadsafe(self._batch_outcome(planned), self._loop)

    async def _batch_outcome(self, planned: Sequence[PlannedItem]) -> BatchOutcome:
        results = await self._run_batch(planned)
        counts = {"done": 0, "failed": 0, "reused": 0, "not_attempted": 0}
        for result in results:
            counts[result] += 1
        return BatchOutcome(**counts, stopped=self.stop_reason, stop_kind=self.stop_kind)

    async def _run_batch(self, planned: Sequence[PlannedItem]) -> list[str]:
        """Start each item in turn as the feed has room (:meth:`_feed_place`), then wait for all of them."""
        tasks: list[asyncio.Task[str]] = []
        try:
            for item in planned:
                if self.stop_reason is not None or not await self._feed_place():
                    break  # the run stops: this item and the rest are not attempted
                label = item.item.label
                self._placed[label] += 1
                task = asyncio.create_task(self._handle(item))
                # the place goes back when the task ends, even one cancelled before its first step
                task.add_done_callback(lambda _, label=label: self._unplace(label))
                tasks.append(task)
                self._tasks.add(task)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:  # cancelled while starting its items: those started go with it, as under gather
                task.cancel()
            raise
        finally:
            self._tasks.difference_update(tasks)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        # a task cancelled at the end of a stop's grace: its item stays pending, unrecorded
        return ["not_attempted" if isinstance(r, BaseException) else r for r in results] + \
            ["not_attempted"] * (len(planned) - len(tasks))

    # --- the feed: how many items are started at once -----------------------------------------------

    def _feed_bound(self) -> int:
        """Items that may hold a place of the feed now: ``FEED_PER_SLOT`` per request the in-flight limit allows,
        plus ``FEED_HEADROOM``."""
        limiter = self.limiter
        slots = limiter.in_flight_limit if limiter is not None else self.settings.rate_limit.max_concurrent
        return FEED_PER_SLOT * slots + FEED_HEADROOM

    async def _feed_place(self) -> bool:
        """A place for one more started item: at once when there is room and no batch waits ahead, else in turn
        (FIFO across batches, so the items start in the order the batches were handed over). False: the run is
        stopping, no place was taken."""
        if not self._feed_waiters and self._fed < self._feed_bound():
            self._fed += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._feed_waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._fed -= 1  # handed over as we were cancelled: pass it on
                self._feed_wake()
            elif waiter in self._feed_waiters:
                self._feed_waiters.remove(waiter)
            raise

    def _feed_wake(self) -> None:
        """Hand free places to waiting batches, in turn; when the run stops, wake every one of them (no place)."""
        waiters = self._feed_waiters
        if not waiters:
            return
        if self.stop_reason is not None:
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(False)
            return
        bound = self._feed_bound()
        while waiters and self._fed < bound:
            waiter = waiters.popleft()
            if not waiter.done():
                self._fed += 1
                waiter.set_result(True)

    def _unplace(self, label: str) -> None:
        """``label``'s item gives its place back: it ended, or it waits out a retry's back-off (a straggler must
        not hold up the supply of first tries)."""
        if self._placed[label] <= 0:
            return
        self._placed[label] -= 1
        if not self._placed[label]:
            del self._placed[label]
        self._fed -= 1
        self._feed_wake()

    # --- per item -----------------------------------------------------------------------------------

    def _on_retry(self, item: str | None, error: VoxmillError, attempt: int) -> None:
        self.progress.add(retries=1, rate_limited=int(isinstance(error, RateLimited)))
        if item is not None and item not in self._retrying:
            self._retrying.add(item)
            self.progress.add(retrying=1)
        if item is not None:
            self._unplace(item)

    async def _handle(self, planned: PlannedItem) -> str:
        item, key = planned.item, planned.key
        if self.stop_reason is not None:
            return "not_attempted"
        if item.problem is not None:
            return self._record_or_stop(self._failed_row(item, key, item.problem.kind, item.problem.message,
                                                         utc_now()))
        if key in self._in_flight:
            with contextlib.suppress(asyncio.CancelledError):  # the first copy was cancelled by a stop
                await asyncio.shield(self._in_flight[key])
            if self.stop_reason is not None:
                return "not_attempted"
        if self.done_index.done_as(key, item.item_id):
            return "reused"  # already recorded (a retried batch, or a duplicate row)
        if self.done_index.has_key(key):
            reused = await self._reuse(item, key)
            if reused is not None:
                return "reused" if self._record_or_stop(reused) == "done" else "not_attempted"
        future: asyncio.Future[LedgerRow] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        self.progress.add(in_flight=1)
        try:
            row = await self._process(item, key)
            future.set_result(row)
        except RunStopped:
            return "not_attempted"
        except DiskFull as exc:
            self._begin_stop(exc.message, 0.0)
            return "not_attempted"
        finally:
            self.progress.add(in_flight=-1)
            del self._in_flight[key]
            if not future.done():
                future.cancel()
            if item.label in self._retrying:
                self._retrying.discard(item.label)
                self.progress.add(retrying=-1)
        return self._record_or_stop(row)

    async def _process(self, item: WorkItem, key: str) -> LedgerRow:
        started = utc_now()
        try:
            if item.kind == "tts":
                return await self._synthesize(item, key, started)
            return await self._transcribe(item, key, started)
        except (RunStopped, DiskFull):
            raise
        except AuthError as exc:
            self.stop_reason = f"the API refused the key ({exc.message}); fix VOXMILL_API_KEY and rerun"
            self.stop_kind = exc.kind
            return self._failed_row(item, key, exc.kind, exc.message, started, exc)
        except VoxmillError as exc:
            return self._failed_row(item, key, exc.kind, labelled(item.label, exc.message), started, exc)
        except Exception as exc:  # a bug must not take the batch down with it: record it
            full = disk_full_error(exc, getattr(exc, "filename", None) or f"the output of {item.label}")
            if full is not None:
                raise full from None
            log.exception("unexpected error on %s", item.label)
            return self._failed_row(item, key, "internal", f"{item.label}: {type(exc).__name__}: {exc}", started)

    async def _synthesize(self, item: WorkItem, key: str, started: str) -> LedgerRow:
        assert self._client is not None
        params = dict(item.params)
        if item.voice_ref:
            params["voice_id"] = await self._client.upload_voice(item.model, Path(item.voice_ref))
        request = ValidatedRequest(get_model(item.model), params, item.warnings)
        spec = self.job.output
        target = self.job.out_dir / "audio" / f"{output_stem(item.item_id)}.{audio_format(spec.format).extension}"
        target.parent.mkdir(parents=True, exist_ok=True)
        # the body streams into a temp name beside its output (swept at the next run's start if killed): a
        # WAV kept as it is then becomes the output by one rename
        body = partial_path(target)
        try:
            result: SpeechResult = await self._client.synthesize(request, into=body, item=item.label)
            small_wav = result.size <= _INLINE_WRITE_BYTES and result.format == spec.format == "wav"
            if small_wav and not spec.loudness_lufs:
                # a short WAV kept as it is: moving and measuring it costs less than the hop to a worker thread
                info = transcode_file(body, result.format, target, spec)
            else:
                info = await asyncio.to_thread(transcode_file, body, result.format, target, spec)
        finally:
            body.unlink(missing_ok=True)  # moved or converted already, unless it failed
        self.progress.add(audio_seconds=info.duration_s)
        return LedgerRow(
            **self._base(item, key, started),
            status="done",
            engine=result.engine,
            attempts=result.attempts,
            http_status=result.status,
            latency_s=round(result.latency_s, 4),
            output_path=str(target.relative_to(self.job.out_dir)),
            output_format=info.format,
            duration_s=info.duration_s,
            sample_rate=info.sample_rate,
            channels=info.channels,
            bytes=info.bytes,
            sha256=info.sha256,
            lufs=info.lufs,
            peak_dbfs=info.peak_dbfs,
            credits_remaining=result.credits_remaining,
            request_id=result.request_id,
        )

    async def _transcribe(self, item: WorkItem, key: str, started: str) -> LedgerRow:
        assert self._client is not None and item.audio is not None
        source = await asyncio.to_thread(self._local_copy, item.audio)
        work_dir = Path(tempfile.mkdtemp(dir=self._scratch))
        try:
            spec = get_model(item.model)
            accepted = spec.param_by_name["file"].file_types
            prepared = await asyncio.to_thread(prepare_asr_input, source, accepted, cache_dir=work_dir)
            info = await asyncio.to_thread(measure_file, Path(prepared), loudness=False)
            peak = await asyncio.to_thread(file_peak_dbfs, Path(prepared))  # QC: text on near-silence
            pieces = await asyncio.to_thread(split_on_silence, Path(prepared), self.job.asr_max_seconds, work_dir)
            results: list[TranscriptResult] = []
            for piece in pieces:
                request = ValidatedRequest(spec, {**item.params, "file": piece.path}, item.warnings)
                results.append(await self._client.transcribe(request, item=item.label))
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        text, segments = stitch_transcripts(
            (piece, result.text, result.segments) for piece, result in zip(pieces, results, strict=True)
        )
        raw: dict[str, Any] = {
            "text": text,
            "segments": [s.to_dict() for s in segments],
            "pieces": [r.raw for r in results],
        }
        base = self.job.out_dir / "transcripts" / output_stem(item.item_id)
        paths = await asyncio.to_thread(write_transcript_files, base, text, segments, raw)
        last = results[-1]
        qc = transcript_qc(text, info.duration_s, peak)
        return LedgerRow(
            **self._base(item, key, started),
            status="done",
            engine=last.engine,
            attempts=sum(r.attempts for r in results),
            http_status=last.status,
            latency_s=round(sum(r.latency_s for r in results), 4),
            output_path=str(paths["txt"].relative_to(self.job.out_dir)),
            output_format="txt",
            duration_s=info.duration_s,
            sample_rate=info.sample_rate,
            channels=info.channels,
            bytes=info.bytes,
            sha256=info.sha256,
            transcript=text,
            language=last.language or item.params.get("language"),
            wer=_wer(item, text),
            qc_compression_ratio=qc.compression_ratio,
            qc_chars_per_s=qc.chars_per_s,
            qc_flags=qc.flags_text,
            peak_dbfs=peak,
            credits_remaining=last.credits_remaining,
            request_id=last.request_id,
        )

    def _local_copy(self, audio: str) -> Path:
        """A local path for an ASR input (fsspec URLs are fetched into scratch space first)."""
        if "://" not in audio or audio.startswith("file://"):
            return Path(audio.removeprefix("file://"))
        target = self._scratch / f"{os.getpid()}-{content_hash(audio)[:16]}{Path(audio.split('?')[0]).suffix}"
        with open_binary(audio) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return target

    async def _reuse(self, item: WorkItem, key: str) -> LedgerRow | None:
        """``item`` as done from an identical item's output, without a request.

        None (the item is then sent) when that output is gone, or no longer what the identical item made:
        its id may have been given other content and regenerated since. The files are linked under
        temporary names, checked (audio: its sha256; transcript: its text) and only then renamed into
        place, replacing whatever an earlier run left under this item's name.
        """
        source_row = await asyncio.to_thread(self.done_index.row_of, key)
        if source_row is None or not source_row.output_path:
            return None
        source = self.job.out_dir / source_row.output_path
        stem = output_stem(item.item_id)
        if item.kind == "tts":
            pairs = [(source, source.with_name(stem + source.suffix))]
        else:
            base = source.with_suffix("")
            pairs = [(base.with_name(f"{base.name}.{ext}"), base.with_name(f"{stem}.{ext}"))
                     for ext in TRANSCRIPT_EXTENSIONS]
        if self.job.fetch is not None:
            await asyncio.to_thread(self.job.fetch, [str(p.relative_to(self.job.out_dir)) for p, _ in pairs])
        if not await asyncio.to_thread(_adopt_outputs, pairs, source_row):
            return None
        output_path = str(pairs[0][1].relative_to(self.job.out_dir))
        values = {**source_row.to_dict(), **self._base(item, key, utc_now()), "output_path": output_path,
                  "reused_from": source_row.id, "attempts": 0, "latency_s": 0.0, "request_id": None}
        if item.kind == "asr":  # the same audio, but this item's own reference: its WER is its own
            values["wer"] = _wer(item, source_row.transcript or "")
        return LedgerRow.from_dict(values)

    # --- rows ---------------------------------------------------------------------------------------

    def _base(self, item: WorkItem, key: str, started: str) -> dict[str, Any]:
        params = {k: v for k, v in item.params.items() if k != "text"}
        return {
            "id": item.item_id,
            "key": key,
            "row": item.row,
            "kind": item.kind,
            "model": item.model,
            "params": json.dumps(params, sort_keys=True, ensure_ascii=False, default=str),
            "text": item.params.get("text") if item.kind == "tts" else None,
            "input": item.audio if item.kind == "asr" else (item.voice_ref or None),
            "started_at": started,
            "finished_at": utc_now(),
            "warnings": "; ".join(item.warnings) or None,
            "run_id": self.ledger.run_id,
            "flow_run_id": self.flow_run_id,
        }

    def _failed_row(
        self, item: WorkItem, key: str, kind: str, message: str, started: str, error: VoxmillError | None = None
    ) -> LedgerRow:
        return LedgerRow(
            **self._base(item, key, started),
            status="failed",
            error_kind=kind,
            error_message=message[:2000],
            attempts=error.attempts if error else 0,
            http_status=error.status if error else None,
        )

    def _record_or_stop(self, row: LedgerRow) -> str:
        """Record ``row`` and return its status; on a full disk stop the run and return "not_attempted"."""
        try:
            self._record(row)
        except DiskFull as exc:
            self._begin_stop(exc.message, 0.0)
            return "not_attempted"
        return row.status

    def _show_limits(self, limiter: AsyncRateLimiter) -> None:
        """Put what the limiter holds now on the progress board (the learned rate and in-flight limit)."""
        board = self.progress
        board.api_rate = limiter.current_rate
        board.requests_in_flight = limiter.in_flight
        board.in_flight_limit = limiter.in_flight_limit
        board.in_flight_high = max(board.in_flight_high, limiter.in_flight_high)

    def _record(self, row: LedgerRow) -> None:
        self.ledger.append(row)
        if self.limiter is not None:
            self._show_limits(self.limiter)
        if row.status == "done":
            self.done_index.add(row.key, row.id, row)
            self.progress.add(done=1)
        else:
            self.progress.add(failed=1)


def _wer(item: WorkItem, transcript: str) -> float | None:
    """The word error rate of ``transcript`` against ``item``'s reference text (None: it has none)."""
    return round(word_error_rate(item.reference_text, transcript), 4) if item.reference_text else None


def _adopt_outputs(pairs: Sequence[tuple[Path, Path]], source_row: LedgerRow) -> bool:
    """Link (or copy) each existing ``source`` to its ``target`` if the first still holds what
    ``source_row`` recorded; False (nothing changed) when it does not or is gone."""
    staged: list[tuple[Path, Path]] = []
    try:
        for source, target in pairs:
            temp = partial_path(target)
            try:
                os.link(source, temp)  # a link keeps this inode even if the source is replaced meanwhile
            except FileNotFoundError:
                if not staged:
                    return False
                continue
            except OSError:
                shutil.copy2(source, temp)
            staged.append((temp, target))
        if not staged or not _holds(staged[0][0], source_row):
            return False
        for temp, target in staged:
            os.replace(temp, target)
        staged.clear()
        return True
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)


def _holds(path: Path, row: LedgerRow) -> bool:
    """Whether ``path`` is the output ``row`` recorded: audio by its sha256, a transcript by its text."""
    if row.kind == "tts":
        return file_hash(path) == row.sha256
    return path.read_text(encoding="utf-8").strip() == (row.transcript or "").strip()


__all__ = ["BatchEngine", "BatchOutcome", "JobSpec", "output_stem"]
