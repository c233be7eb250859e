"""A moto S3 server on a loopback port as a pytest fixture: the bucket of the object-storage tests.

Import the fixture into a test module (``from s3_fixture import s3_bucket  # noqa: F401``); it yields an
``s3fs`` filesystem with the bucket ``BUCKET`` made, and points the standard AWS variables (which subprocesses
inherit) at the server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

BUCKET = "voxmill-test"


@pytest.fixture
def s3_bucket(monkeypatch) -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir(BUCKET)
    fs.endpoint = endpoint
    yield fs
    fs.rm(BUCKET, recursive=True)  # moto keeps buckets in memory for the whole process
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
