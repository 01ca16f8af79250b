"""uvicorn's httptools protocol with request heads bounded (see ``shared/http_server.py``,
which picks it where httptools is installed: ``bounded_http``)."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.http_server import MAX_HEAD_BYTES


# uvicorn's parser callbacks, extended; guarded by tests/unit/test_http_server.py
class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request whose head is still unfinished after
    ``MAX_HEAD_BYTES`` (400, and the connection closed, as uvicorn's h11 protocol does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # The whole read counts: a head begun in it may follow the end of the one before.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.logger.warning("Request head over %d bytes refused.", MAX_HEAD_BYTES)
                self.send_400_response("Request head too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
