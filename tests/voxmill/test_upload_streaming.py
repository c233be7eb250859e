"""Large ASR uploads stream from disk: the body is never held whole, and a retry resends it in full."""

from __future__ import annotations

import numpy as np
from test_client_server import settings_for

from voxmill.audio.formats import wav_bytes
from voxmill.catalog import validate
from voxmill.http import VoxmillClient
from voxmill.http.client import STREAM_UPLOAD_BYTES


async def test_a_large_upload_streams_from_disk_and_a_retry_resends_it_whole(make_server, tmp_path):
    server = make_server(fail_first_n=1)  # the first try answers 503: the retry must send every byte again
    samples = (np.sin(np.arange(16000 * 40) * 0.05) * 5000).astype(np.int16)  # 40 s at 16 kHz: 1.28 MB
    data = wav_bytes(samples, 16000)
    assert len(data) > STREAM_UPLOAD_BYTES
    path = tmp_path / "long.wav"
    path.write_bytes(data)
    async with VoxmillClient(settings_for(server, tmp_path)) as client:
        result = await client.transcribe(validate("whisper_v3_turbo", {"file": path}))
    # the null engine measures the audio that arrived: all 40 s, on the second try
    assert result.attempts == 2 and abs(result.duration - 40.0) < 0.01
    stats = server.stats()
    # fail_first_n counts tries by content hash: both tries carried the same bytes
    assert stats["by_status"] == {"503": 1, "200": 1} and stats["generations_total"] == 1
