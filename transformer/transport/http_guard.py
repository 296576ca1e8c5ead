"""uvicorn's HTTP protocol with the guards it lacks: a header timeout, bounded URL and header
sizes, and JSON instead of plain text for requests it cannot parse.

uvicorn times out idle keep-alive connections but not a client that connects and sends its
headers slowly or never: each such socket would be held forever. Here a request's headers must
be complete within `header_timeout_s` of its first byte (or of the connection), else the client
gets a 408 and the connection is closed. `install()` makes it uvicorn's "auto" protocol; KServe's
ModelServer builds its uvicorn config with "auto".
"""

from __future__ import annotations

import asyncio

import orjson
import uvicorn.config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from transformer import metrics

MAX_URL_BYTES = 16 * 1024
MAX_HEADER_BYTES = 64 * 1024


def _answer(status: int, reason: bytes, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": message, "code": code})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; httptools turns it into a parser error."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_size = 0
        self._refusal: tuple[int, bytes, str, str] | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._refuse(408, b"Request Timeout", "request_timeout",
                     f"the request headers did not arrive within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_answer(status, reason, code, message))
            self.transport.close()
            metrics.REQUESTS.labels(protocol="rest", route="other", status=str(status)).inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_size = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._refusal = (414, b"URI Too Long", "invalid_request", f"the URL is over {MAX_URL_BYTES} bytes")
            raise _Refused()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_size += len(name) + len(value)
        if self._header_size > MAX_HEADER_BYTES:
            self._refusal = (431, b"Request Header Fields Too Large", "invalid_request",
                             f"the request headers are over {MAX_HEADER_BYTES} bytes")
            raise _Refused()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser rejects (and to our refusals above)."""
        self._cancel_header_timer()
        self._refuse(*(self._refusal or (400, b"Bad Request", "invalid_request", "the request is not valid HTTP/1.1")))


def install(header_timeout_s: float) -> None:
    GuardedHttpToolsProtocol.header_timeout_s = header_timeout_s
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"
