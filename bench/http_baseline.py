"""The hand-written baseline the throughput benches measure voxmill against: asyncio + httpx + a token bucket.

A plain script, as a careful user would write one: one ``httpx.AsyncClient`` with ``concurrency`` connections,
``concurrency`` workers taking items from a queue, a token bucket at the server's limit, each 200's body written
to a file, a 429 or 503 waited out (its Retry-After) and tried again, a dropped connection tried again. Used by
bench/throughput.py (50 ms latency, concurrency as voxmill's) and bench/latency.py (seconds of latency,
concurrency tuned by hand to rate × latency).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

MODEL = "higgs2p5"
GENERATE_PATH = "/api/v1/generate"


class TokenBucket:
    """A plain token bucket: ``rate`` tokens per second, at most ``capacity`` saved up; FIFO waiters."""

    def __init__(self, rate: float, capacity: float = 2.0) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.stamp = capacity, time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


async def run_baseline(
    base_url: str,
    token: str,
    text_of: Callable[[int], str],
    items: int,
    out_dir: Path,
    *,
    rps: float,
    concurrency: int,
    timeout_s: float = 120.0,
) -> dict[str, int]:
    """POST ``items`` TTS requests (item ``i`` says ``text_of(i)``), each body into ``out_dir``; counts of
    ``ok``, ``429`` and ``503`` (answers waited out), ``other`` (failed items) and ``resets`` (dropped connections
    retried)."""
    import httpx

    out_dir.mkdir(parents=True, exist_ok=True)
    bucket = TokenBucket(rps)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(items):
        queue.put_nowait(index)
    counts = {"ok": 0, "429": 0, "503": 0, "other": 0, "resets": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=timeout_s) as client:

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                while True:
                    await bucket.take()
                    try:
                        response = await client.post(
                            f"{base_url}{GENERATE_PATH}", files={"model": (None, MODEL), "text": (None, text_of(index))}
                        )
                    except httpx.TransportError:  # a dropped connection under load: try again, as any script would
                        counts["resets"] += 1
                        continue
                    if response.status_code == 200:
                        counts["ok"] += 1
                        (out_dir / f"item-{index}.wav").write_bytes(response.content)
                        break
                    if response.status_code in (429, 503):  # too fast, or too many connections: wait, again
                        counts[str(response.status_code)] += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    counts["other"] += 1
                    break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


__all__ = ["GENERATE_PATH", "MODEL", "TokenBucket", "run_baseline"]
