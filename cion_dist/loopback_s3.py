"""A real S3 API (moto's threaded server) on 127.0.0.1, exported through the AWS variables while it runs.

The demo's ``--s3`` mode and the test suite's S3 fixture both start it here, so both talk to the same kind of
endpoint set up the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator, Optional

_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_s3(bucket: Optional[str] = None) -> Iterator[str]:
    """Start the server, point ``AWS_ENDPOINT_URL`` at it (placeholder credentials and region where none are set),
    create ``bucket`` when given, and yield the endpoint; the variables are restored and the server stopped after."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _VARS}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": saved["AWS_DEFAULT_REGION"] or "us-east-1"})
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "loopback")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "loopback")
    try:
        if bucket:
            import s3fs

            s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
