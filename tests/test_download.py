"""labutils.download: atomic, verified downloads from a local 127.0.0.1 server (no internet)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from httpserver import FileServer, closed_port_url  # tests/ is on sys.path (pytest rootdir-less import)

from labutils import download
from labutils.download import download_file, sha256_of
from labutils.errors import DownloadError

BODY = os.urandom(300_000)  # several 64 KiB chunks, so a cut lands mid-stream
BODY_SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "blob.bin").write_bytes(BODY)
    with FileServer(served) as srv:
        yield srv


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_sha256_of_known_vector(tmp_path):
    path = tmp_path / "abc.txt"
    path.write_bytes(b"abc")  # FIPS 180-2 test vector
    assert sha256_of(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_verified_full_and_prefix(server, out):
    dest = download_file(server.url + "blob.bin", out / "blob.bin", sha256=BODY_SHA,
                         sha256_prefix=BODY_SHA[:8], progress=True)
    assert dest == out / "blob.bin"
    assert dest.read_bytes() == BODY
    assert os.listdir(out) == ["blob.bin"]  # no temporary file left
    assert server.requests == ["/blob.bin"]


@pytest.mark.parametrize("kwargs", [{"sha256": "0" * 64}, {"sha256_prefix": "deadbeef"}])
def test_checksum_mismatch_keeps_old_file_and_leaves_no_temp(server, out, kwargs):
    (out / "blob.bin").write_bytes(b"previous good file")
    with pytest.raises(DownloadError, match="checksum") as err:
        download_file(server.url + "blob.bin", out / "blob.bin", progress=False, **kwargs)
    assert server.url + "blob.bin" in str(err.value)
    assert os.listdir(out) == ["blob.bin"]
    assert (out / "blob.bin").read_bytes() == b"previous good file"  # replaced only when verified


def test_http_404(server, out):
    with pytest.raises(DownloadError, match="404") as err:
        download_file(server.url + "missing.bin", out / "missing.bin", progress=False)
    assert "missing.bin" in str(err.value)
    assert os.listdir(out) == []


def test_connection_closed_halfway_then_retry_succeeds(server, out):
    server.cut_after = len(BODY) // 2
    with pytest.raises(DownloadError, match="closed") as err:
        download_file(server.url + "blob.bin", out / "blob.bin", sha256=BODY_SHA, progress=False)
    assert f"{len(BODY) // 2} of {len(BODY)} bytes" in str(err.value)
    assert os.listdir(out) == []
    server.cut_after = None
    download_file(server.url + "blob.bin", out / "blob.bin", sha256=BODY_SHA, progress=False)
    assert (out / "blob.bin").read_bytes() == BODY
    assert server.request_count == 2


def test_server_that_hangs_times_out_then_retry_succeeds(server, out):
    server.cut_after, server.on_cut = 100_000, "hang"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download_file(server.url + "blob.bin", out / "blob.bin", progress=False, timeout=0.5)
    assert time.monotonic() - start < 5  # did not wait for the server's 10 s hang
    assert os.listdir(out) == []
    server.cut_after = None
    download_file(server.url + "blob.bin", out / "blob.bin", sha256=BODY_SHA, progress=False, timeout=5)
    assert sha256_of(out / "blob.bin") == BODY_SHA


def test_connection_refused(out):
    url = closed_port_url() + "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(url, out / "blob.bin", progress=False, timeout=5)
    assert url in str(err.value)
    assert os.listdir(out) == []


def test_not_a_url(out):
    with pytest.raises(DownloadError, match="not-a-url"):
        download_file("not-a-url", out / "x.bin", progress=False)
    assert os.listdir(out) == []


def test_keyboard_interrupt_cleans_up_and_propagates(server, out, monkeypatch):
    class InterruptedBar(download.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt):
        download_file(server.url + "blob.bin", out / "blob.bin", progress=False)
    assert os.listdir(out) == []
