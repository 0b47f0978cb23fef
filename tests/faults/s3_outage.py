"""An S3 server on loopback that tests can take down and bring back on the same port.

moto's S3 app (the same in-process backend as ``tests/infra/s3_server.py``'s session server: the
objects outlive this server's outages, as they outlive an S3 endpoint's) served by werkzeug on
``127.0.0.1:PORT``. :meth:`OutageServer.stop` closes the port, so clients get "connection
refused", as from an endpoint that is down; :meth:`OutageServer.start` opens the same port again.
:meth:`OutageServer.stop_after` arms a trigger: the first request matching (method, path regex)
is served, then the server stops, so an outage can begin in the middle of a checkpoint upload
or between two files of a step.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable

__all__ = ["OutageServer"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OutageServer:
    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None
        self._trigger: Callable[[str, str], bool] | None = None
        self._lock = threading.Lock()
        self.triggered = threading.Event()  # set when an armed trigger stopped the server
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request served

    # --------------------------------------------------------------- up and down
    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        with self._lock:
            if self._server is not None:
                return
            self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True,
                                       request_handler=MotoRequestHandler)
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Close the port: from now on connections are refused."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop_after(self, method: str, path_pattern: str) -> None:
        """The first ``method`` request whose path matches ``path_pattern`` is served; then the server stops."""
        pattern = re.compile(path_pattern)
        self.stop_when(lambda seen, path: seen == method.upper() and bool(pattern.search(path)))

    def stop_when(self, trigger: Callable[[str, str], bool]) -> None:
        """The first request for which ``trigger(method, path)`` is true is served; then the server stops."""
        self.triggered.clear()
        self._trigger = trigger

    # --------------------------------------------------------------- the app
    def _wsgi(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        self.requests.append((method, path))
        response = self._app(environ, start_response)
        trigger = self._trigger
        if trigger is not None and trigger(method, path):
            self._trigger = None
            self.triggered.set()
            # From another thread: shutdown() waits for serve_forever, which waits for this request.
            threading.Thread(target=self.stop, daemon=True).start()
        return response

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="outage-test", aws_secret_access_key="outage-test")
