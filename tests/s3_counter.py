"""A loopback S3 server (moto) that counts the requests it serves, by who sent them (``cion/driver`` or
``cion/worker`` in the User-Agent, see ``storage.fs.process_role``) and by operation, and the time it spends on
them: moto scans and sorts every key of a bucket for each listing page, so at 1e5 keys a page costs it about a
second, where S3 answers in tens of milliseconds; benchmarks subtract the server's time from a driver's wall."""

from __future__ import annotations

import collections
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator


class RequestCounter:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.seconds: collections.Counter = collections.Counter()

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.seconds.clear()

    def record(self, role: str, op: str, seconds: float = 0.0) -> None:
        with self.lock:
            self.counts[(role, op)] += 1
            self.seconds[(role, op)] += seconds

    def server_seconds(self, role: str = "driver") -> float:
        """Time the server spent answering ``role``'s requests (building and sending the responses)."""
        with self.lock:
            return sum(v for (r, _), v in self.seconds.items() if r == role)

    def total(self, role: str = "driver") -> int:
        with self.lock:
            return sum(v for (r, _), v in self.counts.items() if r == role)

    def by_op(self, role: str = "driver") -> dict[str, int]:
        with self.lock:
            return {op: v for (r, op), v in sorted(self.counts.items()) if r == role}


def _op(environ) -> str:
    method = environ.get("REQUEST_METHOD", "")
    query = environ.get("QUERY_STRING", "")
    path = environ.get("PATH_INFO", "").strip("/")
    if method == "GET" and ("list-type" in query or "/" not in path):
        return "LIST"
    return method


@contextmanager
def counting_s3_server() -> Iterator[tuple[str, RequestCounter]]:
    """(endpoint URL, counter) of a moto S3 server on 127.0.0.1 whose requests are counted."""
    import logging

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    counter = RequestCounter()
    app = DomainDispatcherApplication(create_backend_app)

    def counted(environ, start_response):
        ua = environ.get("HTTP_USER_AGENT", "")
        role = "driver" if "cion/driver" in ua else ("worker" if "cion/worker" in ua else "other")
        t0 = time.perf_counter()
        body = list(app(environ, start_response))  # moto builds the whole response here
        counter.record(role, _op(environ), time.perf_counter() - t0)
        return body

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server("127.0.0.1", port, counted, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", counter
    finally:
        server.shutdown()
        thread.join()
