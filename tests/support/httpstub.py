"""A tiny threaded HTTP server on a free 127.0.0.1 port, for the stand-ins tests
need (OTLP receiver, Evolution API, Alertmanager's webhook target)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.support.stack.net import free_port

# (path, lower-cased headers, body) -> (status, content type, response body),
# optionally followed by extra response headers.
Handler = Callable[[str, Mapping[str, str], bytes], tuple[Any, ...]]


class StubServer:
    """Serves POST requests with ``handler`` until :meth:`stop`."""

    def __init__(self, handler: Handler) -> None:
        self.port = free_port()

        class RequestHandler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, content_type, payload, *rest = handler(self.path, headers, body)
                self.send_response(status)
                self.send_header("content-type", content_type)
                for name, value in (rest[0] if rest else {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass  # the tests assert on what was received, not on access logs

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), RequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpStub:
    """Base of the stand-ins: serves :meth:`handle` on its own free port between
    :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.server = StubServer(self.handle)
        self.port = self.server.port

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[Any, ...]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
