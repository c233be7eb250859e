"""The local server: the hosted audio API's contract served offline, with fault injection and counters.

Needs the ``local`` extra (starlette, uvicorn, piper-tts, faster-whisper and their models).
"""

from voxmill.server.app import create_app
from voxmill.server.faults import FaultConfig
from voxmill.server.running import RunningServer, serve_in_thread
from voxmill.server.service import NULL_ENGINE, NULL_TRANSCRIPT, ServerConfig
from voxmill.server.stats import ServerStats, request_content_hash

__all__ = [
    "NULL_ENGINE",
    "NULL_TRANSCRIPT",
    "FaultConfig",
    "RunningServer",
    "ServerConfig",
    "ServerStats",
    "create_app",
    "request_content_hash",
    "serve_in_thread",
]
