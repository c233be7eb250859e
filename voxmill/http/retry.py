"""The one retry policy as tenacity's wait, stop and retry objects (one set per request)."""

from __future__ import annotations

import random

from tenacity import RetryCallState

from voxmill.errors import BadResponse, EmptyAudio, RateLimited, TransientError
from voxmill.settings import RetryPolicy

_RETRYABLE = (TransientError, RateLimited, BadResponse)
#: an empty-audio 200 is tried this often in all: once more in case it was a glitch, never as if transient
EMPTY_AUDIO_ATTEMPTS = 2


class Wait:
    """Backoff: exactly Retry-After (+ ≤ 5 %, ≤ 0.1 s jitter) after a 429 that had one; else capped
    exponential ``initial * 2**(n-1)`` spread by ±``jitter`` (a fraction of the backoff), ``n`` counting this
    request's faults only (429s before them do not lengthen a fault's backoff) or, after a 429, its tries."""

    def __init__(self, policy: RetryPolicy, stop: Stop) -> None:
        self.policy = policy
        self.stop = stop

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after + random.uniform(0.0, min(0.1, 0.05 * error.retry_after))
        policy = self.policy
        # tenacity asks the wait before the stop: the stop has not counted this fault yet
        n = state.attempt_number if isinstance(error, RateLimited) else self.stop.faults + 1
        backoff = min(policy.max_backoff, policy.initial_backoff * 2 ** (n - 1))
        spread = backoff * policy.jitter
        return max(0.0, min(policy.max_backoff, backoff + random.uniform(-spread, spread)))


class Stop:
    """When to give up (one instance per request): after ``max_attempts`` faulty tries, 429s not counted; on a
    429 once ``rate_limited_deadline`` seconds have passed since the first try."""

    __slots__ = ("policy", "faults")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.faults = 0

    def __call__(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited):
            return state.seconds_since_start is not None and state.seconds_since_start >= (
                self.policy.rate_limited_deadline
            )
        self.faults += 1
        return self.faults >= self.policy.max_attempts


class Retryable:
    """Retry TransientError, RateLimited (unless Retry-After is over the cap) and BadResponse."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.max_retry_after = policy.max_retry_after

    def __call__(self, error: BaseException) -> bool:
        if isinstance(error, RateLimited):
            return error.retry_after is None or error.retry_after <= self.max_retry_after
        if isinstance(error, EmptyAudio):
            return error.attempts < EMPTY_AUDIO_ATTEMPTS
        return isinstance(error, _RETRYABLE)


__all__ = ["EMPTY_AUDIO_ATTEMPTS", "Retryable", "Stop", "Wait"]
