"""A small HTTP server on 127.0.0.1 for the tests: it serves the files of one folder.

It can misbehave on purpose, like a real network. With ``cut_after=N`` it announces
the full Content-Length but sends only the first N bytes of the body, then either
closes the connection (``on_cut="close"``) or hangs without sending anything more
(``on_cut="hang"``, until the server stops or ``hang_seconds`` pass). Both settings
can be changed while it runs (``server.cut_after = None`` "repairs" it).
``server.requests`` lists the paths asked for, in order.

Everything is bounded: the server listens on 127.0.0.1 only, every connection has a
socket timeout, and ``stop()`` (or leaving the ``with`` block) releases hanging
responses and joins every thread.

    with FileServer(folder) as server:
        urllib.request.urlopen(server.url + "file.bin")
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FileServer:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); ``url`` ends with "/"."""

    def __init__(self, root: Path, *, cut_after: int | None = None, on_cut: str = "close",
                 hang_seconds: float = 10.0) -> None:
        if on_cut not in ("close", "hang"):
            raise ValueError(f"on_cut must be 'close' or 'hang', not {on_cut!r}")
        self.root = Path(root).resolve()
        self.cut_after = cut_after
        self.on_cut = on_cut
        self.hang_seconds = hang_seconds
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = False  # so that server_close() joins the handler threads
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> FileServer:
        """Start serving in a background thread; return self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FileServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging responses, stop serving, close the socket and join all threads."""
        self._release.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def request_count(self) -> int:
        """How many requests the server has received."""
        with self._lock:
            return len(self.requests)


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # seconds; a silent client cannot hold a thread forever

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        name = unquote(urlparse(self.path).path).lstrip("/")
        with owner._lock:
            owner.requests.append("/" + name)
        path = (owner.root / name).resolve()
        if not path.is_relative_to(owner.root) or not path.is_file():
            self.send_error(404, "File not found")
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = owner.cut_after
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        if cut is not None and owner.on_cut == "hang":
            owner._release.wait(owner.hang_seconds)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


def closed_port_url() -> str:
    """The URL of a 127.0.0.1 port on which nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
