"""The status table: what each HTTP status of the API means, as code — for the HTTP path and the WebSocket alike.

401/403/402 → AuthError (stop the run); 429 → RateLimited (retried after at least Retry-After; the limiter
lowers its rate); 408/409/425/5xx → TransientError (retried with backoff and jitter); 3xx and other 4xx →
InvalidItem (never retried).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Container
from dataclasses import dataclass

import httpx

from voxmill.errors import AuthError, InvalidItem, RateLimited, TransientError, VoxmillError


def item_label(item: str | None) -> str:
    """The prefix that names an item in a message (empty without one)."""
    return f"{item}: " if item else ""


@dataclass(frozen=True)
class StatusRule:
    """A row of :data:`STATUS_TABLE`: the statuses it covers, the error they become, the message.

    ``message`` is formatted with ``label`` (the item), ``status``, ``base_url``, ``body`` (the first
    500 bytes, key scrubbed), ``location`` (a redirect's target) and ``wait`` (a 429's Retry-After).
    """

    statuses: Container[int]
    error: type[VoxmillError]
    message: str


#: what each non-2xx status means; the first row that covers a status wins
STATUS_TABLE: tuple[StatusRule, ...] = (
    StatusRule(frozenset({401, 403}), AuthError,
               "{label}the API refused the key (HTTP {status}): check VOXMILL_API_KEY "
               "(and VOXMILL_BASE_URL={base_url})"),
    StatusRule(frozenset({402}), AuthError,
               "{label}the API answered 402 Payment Required: the account behind VOXMILL_API_KEY has no credits "
               "left; {body!r}"),
    StatusRule(frozenset({429}), RateLimited,
               "{label}rate limited by the API (HTTP 429, {wait}); voxmill slows down on its own: if this persists, "
               "lower VOXMILL_CONCURRENCY or VOXMILL_RPS"),
    StatusRule(frozenset({408, 409, 425}), TransientError, "{label}the API failed with HTTP {status}: {body!r}"),
    StatusRule(range(500, 600), TransientError, "{label}the API failed with HTTP {status}: {body!r}"),
    StatusRule(range(300, 400), InvalidItem,
               "{label}the API redirected (HTTP {status}) to {location!r}: check VOXMILL_BASE_URL={base_url}"),
    # 400/404/413/415/422 and any other status: this item as sent can never succeed
    StatusRule(range(0, 1000), InvalidItem, "{label}the API rejected the request (HTTP {status}): {body!r}"),
)


def error_for_status(
    response: httpx.Response, item: str | None, base_url: str, preview: Callable[[bytes], str]
) -> VoxmillError | None:
    """The error :data:`STATUS_TABLE` makes of ``response`` (None for a 2xx)."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    return error_for_status_code(
        status, item=item, base_url=base_url, body=preview(response.content),
        location=response.headers.get("location"),
        retry_after=parse_retry_after(response.headers.get("retry-after")) if status == 429 else None,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None when absent or malformed."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def error_for_status_code(
    status: int, *, item: str | None, base_url: str, body: str = "", location: str | None = None,
    retry_after: float | None = None,
) -> VoxmillError | None:
    """The error :data:`STATUS_TABLE` makes of a bare status (a WebSocket handshake refused, say); None for a 2xx."""
    if 200 <= status < 300:
        return None
    rule = next(rule for rule in STATUS_TABLE if status in rule.statuses)
    message = rule.message.format(
        label=item_label(item), status=status, base_url=base_url, body=body, location=location,
        wait="no Retry-After" if retry_after is None else f"Retry-After {retry_after:g} s",
    )
    if rule.error is RateLimited:
        return RateLimited(message, retry_after=retry_after)
    return rule.error(message, status=status)


__all__ = ["STATUS_TABLE", "StatusRule", "error_for_status", "error_for_status_code", "item_label",
           "parse_retry_after"]
