"""Download a file atomically and verify its SHA-256 checksum.

``download_file`` streams a URL into a temporary file next to the destination,
showing a tqdm progress bar, checks the SHA-256 digest (the whole digest, or only
its first hex digits: the torch hub convention, where ``vgg16-397923af.pth``
carries the first 8 hex digits of its own SHA-256), and only then renames the
temporary file into place with ``os.replace``. A rename within one folder is
atomic, so the destination either does not exist or holds the complete, verified
file. On any failure the temporary file is removed and ``DownloadError`` says which
URL failed and why; running the download again simply starts over.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from labutils.errors import DownloadError

CHUNK_BYTES = 1 << 16


def sha256_of(path: Path) -> str:
    """The SHA-256 digest of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest``, verified, atomically; return ``dest``.

    ``timeout`` (seconds) bounds the connection and every read, so a server that
    stops sending raises ``DownloadError`` instead of hanging. ``sha256`` is the full
    expected digest, ``sha256_prefix`` its first hex digits (either, both or none).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, desc=dest.name, progress=progress, timeout=timeout)
        _check_digest(digest, sha256, sha256_prefix, url)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared cache should be readable
        os.replace(tmp, dest)
    except BaseException as exc:  # KeyboardInterrupt too: never leave a partial file
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DownloadError) or not isinstance(exc, (OSError, ValueError, http.client.HTTPException)):
            raise
        raise DownloadError(f"Could not download {url}: {_reason(exc, timeout)}") from exc
    return dest


def _stream(url: str, out: BinaryIO, *, desc: str, progress: bool, timeout: float) -> str:
    """Copy the body of ``url`` into ``out``; return its SHA-256 hex digest."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress) as bar:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:  # urllib returns a short body silently
        raise DownloadError(
            f"Could not download {url}: the connection closed after {received} of {total} bytes; try again"
        )
    return digest.hexdigest()


def _check_digest(digest: str, sha256: str | None, sha256_prefix: str | None, url: str) -> None:
    """Raise ``DownloadError`` unless ``digest`` matches the expected digest or prefix."""
    for expected in (sha256, sha256_prefix):
        if expected is not None and not digest.startswith(expected.lower()):
            raise DownloadError(
                f"Could not download {url}: checksum mismatch, expected SHA-256 {expected}..., got {digest}; "
                "the file is corrupted or truncated and was not kept"
            )


def _reason(exc: BaseException, timeout: float) -> str:
    """A short human reason for a network error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP error {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return f"no data from the server for {timeout:g} s (timed out); try again"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no server answers at that address)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the server's name, is there a network? ({exc.strerror})"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived; try again"
    return f"{exc.__class__.__name__}: {exc}"
