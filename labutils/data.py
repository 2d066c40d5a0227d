"""The sample images: which they are, where they are found, how they arrive.

The lab's test photos (the seed's "bull mastiff / tiger cat" picture and four
others) are not committed to the repository: the manifest, shipped inside the
package (``labutils/manifest/``, so an installed wheel has it too), lists each
file with its source URL in ``SOURCES.md`` and its SHA-256 in ``SHA256SUMS``. A
sample is looked for in the folder named by ``LABUTILS_DATA`` (if set), then in
``data_dir()``, and used only if its checksum matches; if it is nowhere, it is
downloaded into ``data_dir()`` and verified. ``data_dir()`` is the checkout's
``data/`` folder (``pip install -e .``), or for an installed package, whose folder
may be read-only (a hub image), ``~/.cache/labutils/data`` (``$XDG_CACHE_HOME``).

``python -m labutils fetch [--from DIR]`` gets everything ahead of time (both
weight files and all samples), from the internet or by copying from a folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labutils import weights
from labutils.download import download_file, sha256_of
from labutils.errors import DownloadError, ImageError, ImageNotFoundError, LabError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (pip install -e .), or site-packages for an installed wheel
DEFAULT_SAMPLE = "cat_dog.jpg"  # the seed's bull mastiff and tiger cat
ARCHS = ("alexnet", "vgg16")


@dataclass(frozen=True)
class SampleImage:
    """One line of the manifest: file name, where it comes from, its SHA-256, a note."""

    name: str
    url: str
    sha256: str
    notes: str


def manifest_dir() -> Path:
    """The package's ``manifest/`` folder: ``SOURCES.md`` and ``SHA256SUMS`` (package data, in the wheel too)."""
    return PACKAGE_DIR / "manifest"


def data_dir() -> Path:
    """Where downloaded samples land: the checkout's ``data/``, or a per-user folder for an installed package."""
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "data"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "labutils" / "data"


def sample_images() -> list[SampleImage]:
    """The samples listed in the manifest's ``SOURCES.md``, with their checksums from its ``SHA256SUMS``."""
    sources, sums = manifest_dir() / "SOURCES.md", manifest_dir() / "SHA256SUMS"
    for path in (sources, sums):
        if not path.is_file():
            raise LabError(
                f"The sample manifest {path} is missing: this labutils was installed without its data files; "
                "reinstall it (pip install --force-reinstall --no-deps labutils, from the lab's release)"
            )
    checksums = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.strip().partition(" ")
            checksums[name.strip().lstrip("*")] = digest.lower()  # "*" marks binary mode in sha256sum
    samples = []
    for name, url, notes in _table_rows(sources.read_text(encoding="utf-8")):
        if name not in checksums:
            raise LabError(f"{sources} lists {name} but {sums} has no checksum for it; add its SHA-256 there")
        samples.append(SampleImage(name=name, url=url, sha256=checksums[name], notes=notes))
    return samples


def sample_path(name: str = DEFAULT_SAMPLE, *, download: bool = True, progress: bool = True) -> Path:
    """The path of a verified copy of sample ``name``, downloaded into ``data/`` if needed.

    A file found with the wrong checksum is not used: ``ImageError`` says which and what to do.
    """
    sample = _sample(name)
    found = _find(sample)
    if found is not None:
        return found
    looked = ", ".join(str(d / name) for d in _search_dirs())
    ways_out = (
        f"Ways out: run `python -m labutils fetch` where there is internet (or `python -m labutils fetch "
        f"--from DIR` to copy from a folder holding the samples); set LABUTILS_DATA to such a folder; "
        f"or download {sample.url} yourself and copy it into {data_dir()}"
    )
    if not download:
        raise ImageNotFoundError(f"Sample image {name} not found (looked for {looked}). {ways_out}")
    try:
        return download_file(sample.url, data_dir() / name, sha256=sample.sha256, progress=progress)
    except DownloadError as exc:
        raise DownloadError(
            f"Sample image {name} not found (looked for {looked}) and the download failed ({exc}). {ways_out}"
        ) from exc


def fetch(from_dir: Path | None = None, *, progress: bool = True) -> list[Path]:
    """Get both weight files and every sample image (copied from ``from_dir`` if given); return their paths.

    What is already present (and, for the samples, verified) is skipped. The
    weight files are checked against their names whenever they are loaded.
    """
    samples = sample_images()
    found = {s.name: _find(s) for s in samples}
    missing = [s for s in samples if found[s.name] is None]
    if from_dir is not None:
        from_dir = Path(from_dir).expanduser()
        if not from_dir.is_dir():
            raise ImageNotFoundError(f"--from {from_dir}: no such folder; give the folder holding the files")
        absent = [s.name for s in missing if not (from_dir / s.name).is_file()]
        if absent:
            raise ImageNotFoundError(
                f"{from_dir} lacks the sample image(s) {', '.join(absent)}; copy them there "
                "(sources in labutils/manifest/SOURCES.md) or run `python -m labutils fetch` without --from"
            )
    paths = []
    for arch in ARCHS:
        present = weights.find_weights(arch)
        if present is not None:
            paths.append(present)
        elif from_dir is not None:
            paths.append(weights.install_weights_from(from_dir, arch))
        else:
            paths.append(weights.download_weights(arch, progress=progress))
    for sample in samples:
        if found[sample.name] is not None:
            paths.append(found[sample.name])
        elif from_dir is not None:
            paths.append(_copy_verified(from_dir / sample.name, data_dir() / sample.name, sample.sha256))
        else:
            paths.append(sample_path(sample.name, progress=progress))
    return paths


def data_status() -> dict[str, bool]:
    """For each sample: is a verified copy at hand (no download tried)?"""
    status = {}
    for sample in sample_images():
        try:
            status[sample.name] = _find(sample) is not None
        except ImageError:  # a copy with the wrong checksum
            status[sample.name] = False
    return status


# --- the steps -------------------------------------------------------------------


def _table_rows(markdown: str) -> list[tuple[str, str, str]]:
    """The (file, source URL, notes) rows of the markdown table, without header and separator."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or len(cells) != 3:
            continue
        if cells[0].lower() == "file" or set(cells[0]) <= set("-: "):
            continue  # the header, or the |---|---| line under it
        rows.append((cells[0], cells[1].strip("<>"), cells[2]))
    return rows


def _sample(name: str) -> SampleImage:
    """The manifest entry of ``name``, or LabError listing the samples."""
    samples = sample_images()
    for sample in samples:
        if sample.name == name:
            return sample
    raise LabError(f"No sample image named {name!r}; the samples are: {', '.join(s.name for s in samples)}")


def _search_dirs() -> list[Path]:
    """Where samples are looked for: $LABUTILS_DATA (if set), then data/."""
    dirs = []
    env = os.environ.get("LABUTILS_DATA", "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(data_dir())
    return dirs


def _find(sample: SampleImage) -> Path | None:
    """The first copy of ``sample`` in the search folders, if its checksum is right; None if there is none."""
    for folder in _search_dirs():
        path = folder / sample.name
        if path.is_file():
            digest = sha256_of(path)
            if digest != sample.sha256:
                raise ImageError(
                    f"{path} is not the lab's {sample.name}: its SHA-256 is {digest}, expected {sample.sha256} "
                    f"(damaged, or another picture). Delete or move it, then run `python -m labutils fetch`; "
                    f"to use your own picture, give its path to load_image instead"
                )
            return path
    return None


def _copy_verified(src: Path, dest: Path, sha256: str) -> Path:
    """Copy ``src`` to ``dest`` through a temporary file, checking the SHA-256 before the atomic rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as source:
            shutil.copyfileobj(source, out)
        digest = sha256_of(tmp)
        if digest != sha256:
            raise ImageError(
                f"{src} is not the lab's {dest.name}: its SHA-256 is {digest}, expected {sha256}; "
                "replace it with the original file (sources in labutils/manifest/SOURCES.md)"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
