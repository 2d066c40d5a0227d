"""labutils.data: the sample manifest, finding verified copies, downloading and fetching them.

No test writes into the repository's data/ folder: ``data.data_dir`` (where samples land) and
``data.manifest_dir`` are pointed at a temporary folder holding a copy of the manifest (or a
manifest made for the test).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from httpserver import FileServer, closed_port_url  # tests/ is on sys.path (pytest rootdir-less import)

from labutils import data, weights
from labutils.data import SampleImage, data_status, fetch, sample_images, sample_path
from labutils.download import download_file
from labutils.errors import DownloadError, ImageError, ImageNotFoundError, LabError, WeightsError

REPO_DATA = Path(__file__).resolve().parents[1] / "data"  # where a checkout's downloads land
MANIFEST = Path(__file__).resolve().parents[1] / "labutils" / "manifest"  # the real manifest, read-only here
SHARED_DATA = os.environ.get("LABUTILS_DATA")  # read before any fixture unsets it
CAT_DOG_SHA256 = "ec62e965a2699adb4d043c0468817062bc7aa5019358fdf8ececd104d3de36e8"


def shared_cat_dog() -> Path:
    """The real cat_dog.jpg: in $LABUTILS_DATA (CI: ../shared/data) or data/, else downloaded into data/
    (a fresh clone on a machine with internet), verified against the manifest's checksum."""
    candidates = [Path(SHARED_DATA)] if SHARED_DATA else []
    candidates += [REPO_DATA.parents[1] / "shared" / "data", REPO_DATA]
    for folder in candidates:
        if (folder / "cat_dog.jpg").is_file():
            return folder / "cat_dog.jpg"
    url = next(row[1] for row in data._table_rows((MANIFEST / "SOURCES.md").read_text()) if row[0] == "cat_dog.jpg")
    try:
        return download_file(url, REPO_DATA / "cat_dog.jpg", sha256=CAT_DOG_SHA256, progress=False)
    except DownloadError as exc:
        pytest.skip(f"cat_dog.jpg is not on this machine and cannot be downloaded ({exc}): set LABUTILS_DATA")


@pytest.fixture
def repo_data(tmp_path, monkeypatch) -> Path:
    """A stand-in for the repository's data/ folder, holding a copy of the real manifest."""
    folder = tmp_path / "repo_data"
    folder.mkdir()
    for name in ("SOURCES.md", "SHA256SUMS"):
        shutil.copy(MANIFEST / name, folder / name)
    monkeypatch.setattr(data, "data_dir", lambda: folder)
    monkeypatch.setattr(data, "manifest_dir", lambda: folder)
    monkeypatch.delenv("LABUTILS_DATA", raising=False)
    return folder


def write_manifest(folder: Path, files: dict[str, bytes], base_url: str) -> None:
    """SOURCES.md and SHA256SUMS for ``files``, served under ``base_url``."""
    rows = "".join(f"| {name} | {base_url}{name} | test file {i} |\n" for i, name in enumerate(files))
    (folder / "SOURCES.md").write_text(f"# Samples\n\n| file | source URL | notes |\n| --- | --- | --- |\n{rows}\n")
    sums = "".join(f"{hashlib.sha256(body).hexdigest()}  {name}\n" for name, body in files.items())
    (folder / "SHA256SUMS").write_text(sums)


@pytest.fixture
def made_up(tmp_path, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    """A data folder whose manifest lists two generated files (not yet present), served nowhere yet."""
    folder = tmp_path / "repo_data"
    folder.mkdir()
    files = {"one.png": b"\x89PNG first file " * 300, "two.jpg": b"\xff\xd8 second file " * 500}
    write_manifest(folder, files, "http://127.0.0.1:9/")
    monkeypatch.setattr(data, "data_dir", lambda: folder)
    monkeypatch.setattr(data, "manifest_dir", lambda: folder)
    monkeypatch.delenv("LABUTILS_DATA", raising=False)
    return folder, files


def leftovers(folder: Path) -> list[str]:
    """Files other than the manifest (e.g. a partial download)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("SOURCES.md", "SHA256SUMS"))


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_lists_the_five_samples_with_their_checksums():
    samples = sample_images()
    sums = dict(reversed(line.split()) for line in (MANIFEST / "SHA256SUMS").read_text().splitlines() if line)
    assert [s.name for s in samples] == [
        "cat_dog.jpg",
        "tabbycat_dog.jpg",
        "bathroom.jpg",
        "firehydrants.jpg",
        "vegetables.jpg",
    ]
    assert {s.name: s.sha256 for s in samples} == sums
    cat_dog = samples[0]
    assert cat_dog == SampleImage(
        name="cat_dog.jpg",
        url="https://raw.githubusercontent.com/ramprs/grad-cam/master/images/cat_dog.jpg",
        sha256=CAT_DOG_SHA256,
        notes="the bull mastiff / tiger cat image (ImageNet classes 243 and 282), 640x480",
    )
    assert all(s.url.startswith("https://raw.githubusercontent.com/") for s in samples)


def test_manifest_without_a_checksum_is_reported(made_up):
    folder, _ = made_up
    (folder / "SHA256SUMS").write_text((folder / "SHA256SUMS").read_text().splitlines()[0] + "\n")
    with pytest.raises(LabError, match="lists two.jpg but .*SHA256SUMS has no checksum"):
        sample_images()


def test_missing_manifest_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "manifest_dir", lambda: tmp_path)
    with pytest.raises(LabError, match="manifest .*SOURCES.md is missing"):
        sample_images()


# --- finding a verified copy -------------------------------------------------------------------


def test_found_in_the_labutils_data_folder(repo_data, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(shared_cat_dog(), shared / "cat_dog.jpg")
    monkeypatch.setenv("LABUTILS_DATA", str(shared))
    assert sample_path("cat_dog.jpg", download=False) == shared / "cat_dog.jpg"
    assert sample_path() == shared / "cat_dog.jpg"  # the default sample
    assert data_status() == {
        "cat_dog.jpg": True,
        "tabbycat_dog.jpg": False,
        "bathroom.jpg": False,
        "firehydrants.jpg": False,
        "vegetables.jpg": False,
    }
    assert leftovers(repo_data) == []


def test_labutils_data_comes_before_the_repo_folder(made_up, tmp_path, monkeypatch):
    folder, files = made_up
    (folder / "one.png").write_bytes(files["one.png"])
    assert sample_path("one.png", download=False) == folder / "one.png"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "one.png").write_bytes(files["one.png"])
    monkeypatch.setenv("LABUTILS_DATA", str(elsewhere))
    assert sample_path("one.png", download=False) == elsewhere / "one.png"


def test_corrupted_copy_is_refused(repo_data, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    body = bytearray(shared_cat_dog().read_bytes())
    body[len(body) // 2] ^= 0xFF
    (shared / "cat_dog.jpg").write_bytes(bytes(body))
    monkeypatch.setenv("LABUTILS_DATA", str(shared))
    with pytest.raises(ImageError, match="is not the lab's cat_dog.jpg: its SHA-256 is [0-9a-f]{64}") as info:
        sample_path("cat_dog.jpg")  # refused, not replaced by a download
    assert str(shared / "cat_dog.jpg") in str(info.value) and CAT_DOG_SHA256 in str(info.value)
    assert data_status()["cat_dog.jpg"] is False


def test_unknown_name_lists_the_samples(repo_data):
    with pytest.raises(LabError, match="No sample image named 'dog.jpg'; the samples are: cat_dog.jpg, tabbycat"):
        sample_path("dog.jpg")


def test_not_found_without_download_says_where_it_looked_and_what_to_do(repo_data):
    with pytest.raises(ImageNotFoundError) as info:
        sample_path("bathroom.jpg", download=False)
    message = str(info.value)
    assert str(repo_data / "bathroom.jpg") in message
    assert "https://raw.githubusercontent.com/ramprs/grad-cam/master/images/bathroom.jpg" in message
    assert "python -m labutils fetch" in message and "LABUTILS_DATA" in message


# --- downloading ---------------------------------------------------------------------------------


def served_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A folder holding ``files``, for a FileServer to serve."""
    served = tmp_path / "served"
    served.mkdir()
    for name, body in files.items():
        (served / name).write_bytes(body)
    return served


def test_download_from_a_local_server(made_up, tmp_path):
    folder, files = made_up
    with FileServer(served_folder(tmp_path, files)) as server:
        write_manifest(folder, files, server.url)
        path = sample_path("two.jpg", progress=False)
        assert path == folder / "two.jpg" and path.read_bytes() == files["two.jpg"]
        assert sample_path("two.jpg", progress=False) == path  # present now: no second download
        assert server.requests == ["/two.jpg"]
    assert data_status() == {"one.png": False, "two.jpg": True}
    assert leftovers(folder) == ["two.jpg"]


def test_download_failure_is_one_clear_error(made_up):
    folder, files = made_up
    url = closed_port_url()
    write_manifest(folder, files, url)
    with pytest.raises(DownloadError) as info:
        sample_path("one.png", progress=False)
    message = str(info.value)
    assert "Sample image one.png not found" in message and str(folder / "one.png") in message
    assert f"{url}one.png" in message and "download failed" in message
    assert "python -m labutils fetch" in message and "LABUTILS_DATA" in message
    assert leftovers(folder) == []


def test_download_with_the_wrong_checksum_leaves_nothing(made_up, tmp_path):
    folder, files = made_up
    served = tmp_path / "served"
    served.mkdir()
    (served / "one.png").write_bytes(b"something else entirely")
    with FileServer(served) as server:
        write_manifest(folder, files, server.url)
        with pytest.raises(DownloadError, match="checksum mismatch"):
            sample_path("one.png", progress=False)
    assert leftovers(folder) == []


# --- fetch ----------------------------------------------------------------------------------------------


@pytest.fixture
def weight_calls(monkeypatch, tmp_path) -> list[tuple]:
    """Replace the weights functions: no weights present; record every download or install."""
    calls: list[tuple] = []

    def download_weights(arch, *, progress=True):
        calls.append(("download", arch, progress))
        return tmp_path / f"{arch}.pth"

    def install_weights_from(folder, arch):
        calls.append(("install", Path(folder), arch))
        return tmp_path / f"{arch}.pth"

    monkeypatch.setattr(weights, "find_weights", lambda arch: None)
    monkeypatch.setattr(weights, "download_weights", download_weights)
    monkeypatch.setattr(weights, "install_weights_from", install_weights_from)
    return calls


def test_fetch_from_a_folder_copies_the_samples(made_up, weight_calls, tmp_path):
    folder, files = made_up
    source = tmp_path / "usb_stick"
    source.mkdir()
    for name, body in files.items():
        (source / name).write_bytes(body)
    paths = fetch(source, progress=False)
    assert weight_calls == [("install", source, "alexnet"), ("install", source, "vgg16")]
    assert paths == [tmp_path / "alexnet.pth", tmp_path / "vgg16.pth", folder / "one.png", folder / "two.jpg"]
    assert all((folder / name).read_bytes() == body for name, body in files.items())
    assert leftovers(folder) == ["one.png", "two.jpg"]
    shutil.rmtree(source)  # present and verified now: a second fetch does not need the folder
    source.mkdir()
    assert fetch(source, progress=False)[2:] == [folder / "one.png", folder / "two.jpg"]


def test_fetch_from_the_shared_folder_with_the_real_manifest(repo_data, weight_calls):
    shared = shared_cat_dog().parent
    paths = fetch(shared, progress=False)
    assert [p.name for p in paths[2:]] == [s.name for s in sample_images()]
    assert all(p.parent == repo_data for p in paths[2:])
    assert all(data_status().values())


def test_fetch_from_a_folder_missing_a_sample_names_it(made_up, weight_calls, tmp_path):
    folder, files = made_up
    source = tmp_path / "usb_stick"
    source.mkdir()
    (source / "one.png").write_bytes(files["one.png"])
    with pytest.raises(ImageNotFoundError, match=r"usb_stick lacks the sample image\(s\) two.jpg"):
        fetch(source, progress=False)
    assert weight_calls == []  # checked before any work
    assert leftovers(folder) == []


def test_fetch_from_a_folder_with_a_wrong_file_leaves_nothing(made_up, weight_calls, tmp_path):
    folder, files = made_up
    source = tmp_path / "usb_stick"
    source.mkdir()
    (source / "one.png").write_bytes(files["one.png"])
    (source / "two.jpg").write_bytes(b"not the right bytes")
    with pytest.raises(ImageError, match="two.jpg is not the lab's two.jpg: its SHA-256"):
        fetch(source, progress=False)
    assert leftovers(folder) == ["one.png"]  # the good file is kept, no partial copy of the bad one


def test_fetch_downloads_weights_and_samples(made_up, weight_calls, tmp_path):
    folder, files = made_up
    with FileServer(served_folder(tmp_path, files)) as server:
        write_manifest(folder, files, server.url)
        paths = fetch(progress=False)
        assert sorted(server.requests) == ["/one.png", "/two.jpg"]
    assert weight_calls == [("download", "alexnet", False), ("download", "vgg16", False)]
    assert paths[2:] == [folder / "one.png", folder / "two.jpg"]
    assert data_status() == {"one.png": True, "two.jpg": True}


def test_fetch_skips_weights_already_present(made_up, weight_calls, monkeypatch, tmp_path):
    folder, files = made_up
    for name, body in files.items():
        (folder / name).write_bytes(body)
    monkeypatch.setattr(weights, "find_weights", lambda arch: tmp_path / f"cached-{arch}.pth")
    paths = fetch(progress=False)
    assert weight_calls == []
    assert paths == [tmp_path / "cached-alexnet.pth", tmp_path / "cached-vgg16.pth", folder / "one.png",
                     folder / "two.jpg"]


def test_fetch_lets_weights_errors_through(made_up, weight_calls, monkeypatch, tmp_path):
    folder, files = made_up
    source = tmp_path / "usb_stick"
    source.mkdir()
    for name, body in files.items():
        (source / name).write_bytes(body)

    def no_weights(folder, arch):
        raise WeightsError(f"No {arch} weights in {folder}")

    monkeypatch.setattr(weights, "install_weights_from", no_weights)
    with pytest.raises(WeightsError, match="No alexnet weights in"):
        fetch(source, progress=False)


def test_fetch_from_a_missing_folder(made_up, weight_calls, tmp_path):
    with pytest.raises(ImageNotFoundError, match="no such folder"):
        fetch(tmp_path / "nowhere", progress=False)
