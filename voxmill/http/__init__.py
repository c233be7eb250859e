"""The audio API's client, in layers: ``client`` (requests, retries, limiter feedback), ``status`` (the status
table, for HTTP and WebSocket alike), ``retry`` (the one retry policy as tenacity objects), ``results`` (typed
results) and ``stream`` (the WebSocket path)."""

from voxmill.http.client import RetryHook, VoxmillClient
from voxmill.http.results import SpeechResult, TranscriptResult
from voxmill.http.status import STATUS_TABLE, StatusRule, error_for_status, parse_retry_after
from voxmill.http.stream import STREAM_PATH

__all__ = ["STATUS_TABLE", "STREAM_PATH", "RetryHook", "SpeechResult", "StatusRule", "TranscriptResult",
           "VoxmillClient", "error_for_status", "parse_retry_after"]
