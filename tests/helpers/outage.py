"""Server outages on cue: a TCP proxy on 127.0.0.1 in front of a test server (S3, MLflow) that goes down on an event.

`proxy.arm(pattern, seconds)` queues an outage. The first request whose request line matches `pattern` (say a
PUT of `checkpoint_manager_snapshot.json`) starts it: that request is dropped, every open connection is cut,
and the proxy stops listening, so new connections are refused, as with a stopped server. After `seconds` (or,
with seconds=None, when the test calls `end(outage)`) it listens again on the same port. Outages fire in the
order they were armed, each once; each records when it began and ended. The server behind the proxy keeps
running, so an outage lasts exactly as long as asked.

Every request line the proxy sees is kept, in order (`proxy.requests`): a test counts what a client asked for,
and so tells a request made once from one retried.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import pytest

from helpers.s3server import S3Server

HOST = "127.0.0.1"
_REQUEST_LINE = re.compile(rb"(?m)^(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r?$")
_REQUEST_START = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) /")


@dataclass
class Outage:
    """One armed outage: its trigger, its length, and when it began and ended (monotonic seconds)."""

    pattern: re.Pattern[bytes]
    seconds: float | None
    began: float | None = None
    ended: float | None = None
    started: threading.Event = field(default_factory=threading.Event)
    over: threading.Event = field(default_factory=threading.Event)


class OutageProxy:
    """Forwards 127.0.0.1:`port` to `upstream` (host, port) until an armed request pattern is seen."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.armed: list[Outage] = []
        self.requests: list[str] = []  # "METHOD path?query" of every request line seen, forwarded or not
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = self._listen(0)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def arm(self, pattern: str, seconds: float | None) -> Outage:
        """Queue an outage of `seconds` (None: until `end`), started by the next request whose path matches
        `pattern` (a regex)."""
        outage = Outage(re.compile(pattern.encode()), seconds)
        with self._lock:
            self.armed.append(outage)
        return outage

    def down_now(self, seconds: float | None) -> Outage:
        """Start an outage of `seconds` (None: until `end`) at once."""
        outage = Outage(re.compile(b"^$"), seconds)
        self._begin(outage)
        return outage

    def close(self) -> None:
        """Stop listening and cut every connection for good."""
        self._closed = True
        self._cut()

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="outage-accept").start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: an outage began, or the proxy closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._connections |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if from_client:
                    # Request lines are matched across reads; the tail kept from the last read is matched again
                    # only where a line ends in the new data. A read that begins with a request starts afresh: on a
                    # kept-alive connection the last request's body (JSON, say) ends without a line break.
                    if _REQUEST_START.match(data):
                        tail = b""
                    seen, fresh_from = tail + data, len(tail)
                    tail = seen[-512:]
                    lines = [line for line in _REQUEST_LINE.finditer(seen) if line.end() > fresh_from]
                    outage = self._triggered(lines)
                    if outage is not None:
                        self._begin(outage)
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._connections -= {source, target}

    def requests_for(self, pattern: str) -> list[str]:
        """The request lines seen so far ("METHOD path"), in order, whose path matches `pattern` (a regex)."""
        with self._lock:
            return [line for line in self.requests if re.search(pattern, line.partition(" ")[2])]

    def _triggered(self, lines: list[re.Match[bytes]]) -> Outage | None:
        """Record the request `lines`; the armed outage the first line that matches it starts, if any."""
        with self._lock:
            self.requests += [f"{line[1].decode()} {line[2].decode()}" for line in lines]
            for line in lines:
                if self.armed and self.armed[0].pattern.search(line[2]):
                    return self.armed.pop(0)
        return None

    def _cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; a bare close() would not
            listener.close()
        for sock in connections:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def end(self, outage: Outage) -> None:
        """End `outage` now: the proxy listens again (an outage still armed is disarmed)."""
        with self._lock:
            if outage.over.is_set():
                return
            outage.ended = time.monotonic()
            outage.over.set()
            if outage in self.armed:  # never began
                self.armed.remove(outage)
                return
        if not self._closed:
            self._listen(self.port)

    def _begin(self, outage: Outage) -> None:
        outage.began = time.monotonic()
        self._cut()
        outage.started.set()
        if outage.seconds is not None:
            timer = threading.Timer(outage.seconds, self.end, args=(outage,))
            timer.daemon = True
            timer.start()


@pytest.fixture
def s3_outages(s3_session_server: S3Server) -> Iterator[OutageProxy]:
    """An OutageProxy in front of the session's S3 server; point storage.endpoint_url at its endpoint_url."""
    proxy = OutageProxy((HOST, s3_session_server.ports["s3.port"]))
    try:
        yield proxy
    finally:
        proxy.close()
