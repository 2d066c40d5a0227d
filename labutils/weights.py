"""The pretrained weight files of AlexNet and VGG-16: where they live, how they arrive, how they are read.

The files are torchvision's ImageNet weights, kept in the standard torch hub cache
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), the folder
torchvision itself uses, so a file either of them downloaded serves both. The
8 hex digits in a file name (``vgg16-397923af.pth``) are the start of the file's
SHA-256: every file is checked against its name before it is used.

A ``.pth`` file is a pickle, and a pickle can run code when loaded, so files are
read with ``torch.load(..., weights_only=True)``, which accepts only tensors and
plain containers: a state_dict, the dict that maps parameter names (``features.0.weight``)
to tensors. Set ``LABUTILS_MIRROR`` to a base URL (a classroom server) to fetch the
files from there instead of download.pytorch.org.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torchvision.models import AlexNet_Weights, VGG16_Weights

from labutils.download import download_file, sha256_of
from labutils.errors import DownloadError, ModelError, WeightsError

SEED_ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-4df8aa71.pth"
_URLS = {url.rsplit("/", 1)[1]: url
         for url in (AlexNet_Weights.IMAGENET1K_V1.url, SEED_ALEXNET_URL, VGG16_Weights.IMAGENET1K_V1.url)}

# arch -> accepted file names; the first is the one downloaded (torchvision's current file).
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "alexnet": (AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1], "alexnet-owt-4df8aa71.pth"),
    "vgg16": (VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1],),
}
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.\w+$")  # torch hub convention: name-<sha256 prefix>.pth
DOWNLOAD_TIMEOUT_S = 30.0  # a server silent this long (connect or any read) counts as failed


def weights_url(filename: str) -> str:
    """Where ``filename`` is downloaded from: ``$LABUTILS_MIRROR/filename`` if set, else download.pytorch.org."""
    mirror = os.environ.get("LABUTILS_MIRROR", "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + filename
    return _URLS.get(filename, "https://download.pytorch.org/models/" + filename)


def cache_dir() -> Path:
    """The torch hub checkpoint folder (honours ``TORCH_HOME``), where torchvision keeps weights too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(arch: str) -> Path | None:
    """The first accepted weight file of ``arch`` present in the cache, or None."""
    return next((p for name in _files(arch) if (p := cache_dir() / name).is_file()), None)


def download_weights(arch: str, *, progress: bool = True) -> Path:
    """Download the weight file of ``arch`` into the cache, verified; raise ``DownloadError`` on failure."""
    name = _files(arch)[0]
    return download_file(weights_url(name), cache_dir() / name, sha256_prefix=_name_hash(name),
                         progress=progress, timeout=DOWNLOAD_TIMEOUT_S)


def install_weights_from(folder: Path, arch: str) -> Path:
    """Copy the weight file of ``arch`` from ``folder`` into the cache, verified against its name, atomically."""
    folder = Path(folder)
    src = next((p for name in _files(arch) if (p := folder / name).is_file()), None)
    if src is None:
        raise WeightsError(f"No {arch} weights in {folder}: expected one of {', '.join(_files(arch))}")
    dest = cache_dir() / src.name
    if dest.is_file() and dest.samefile(src):
        read_state_dict(dest)  # already in place: only verify it
        return dest
    try:  # a copy is a download from a file:// URL: same temp file, checksum and atomic rename
        return download_file(src.resolve().as_uri(), dest, sha256_prefix=_name_hash(src.name), progress=True)
    except DownloadError as exc:
        raise WeightsError(f"{src} was not installed: {exc}") from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict safely (tensors only, no code run), after checking the checksum in its name."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist")
    try:
        with open(path, "rb") as f:
            start = f.read(9)
    except PermissionError as exc:
        raise WeightsError(f"{path} cannot be read: permission denied; change its permissions (chmod +r) "
                           "or copy it somewhere you can read it") from exc
    if _is_safetensors(start, path.stat().st_size):
        raise WeightsError(f"{path} holds safetensors data, not a PyTorch .pth file; convert it with "
                           "torch.save(safetensors.torch.load_file(path), 'weights.pth') and give that file")
    expected = _name_hash(path.name)
    if expected is not None and not sha256_of(path).startswith(expected):
        raise WeightsError(f"{path} does not match the checksum in its name ({expected}): it is damaged or "
                           "not the file it claims to be; delete it and run `python -m labutils fetch`")
    try:
        with warnings.catch_warnings():  # sparse tensors are refused below, in one line
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path} is not a plain state_dict (it holds Python objects that could run code) "
                           "and was not loaded; use a weight file from a source you trust") from exc
    except Exception as exc:
        raise WeightsError(f"{path} is not a readable PyTorch weight file (truncated or not a .pth file): "
                           f"{exc.__class__.__name__}; delete it and fetch it again") from exc
    if not (isinstance(state_dict, dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())):
        raise WeightsError(f"{path} is not a state_dict (a dict of parameter names to tensors) and was not loaded")
    check_values(state_dict, path)
    return state_dict


def check_values(state_dict: dict[str, torch.Tensor], source: object) -> None:
    """Refuse sparse tensors and weights that are NaN or infinite: the model could only output NaN."""
    sparse = [k for k, v in state_dict.items() if v.layout != torch.strided]
    if sparse:
        listed = ", ".join(sparse[:3]) + (", ..." if len(sparse) > 3 else "")
        raise WeightsError(f"{source} holds sparse tensors ({listed}); "
                           "save the dense ones instead: {k: v.to_dense() for k, v in state_dict.items()}")
    broken = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise WeightsError(f"the weights in {source} are not finite (NaN or infinite values in "
                           f"{', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): the training that "
                           "saved them diverged, or the file is damaged; use other weights")


def load_weights_into(model: torch.nn.Module, state_dict: dict, arch: str) -> None:
    """Load ``state_dict`` into ``model`` only if every name and shape matches ``arch``; else change nothing."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} instead of {s}"
                   for k, s in expected.items() if k in state_dict and tuple(state_dict[k].shape) != s]
    if missing or unexpected or wrong_shape:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("wrong shape", wrong_shape)) if keys)
        raise WeightsError(f"These weights do not fit the {arch} architecture ({details}); "
                           f"use the {arch} weight file ({' or '.join(_files(arch))})")
    model.load_state_dict(state_dict, strict=True)


def pretrained_state_dict(arch: str, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """The ImageNet state_dict of ``arch``: from the cache, else downloaded, else one clear ``WeightsError``."""
    path = find_weights(arch)
    if path is None:
        name = _files(arch)[0]
        try:
            path = download_weights(arch, progress=progress)
        except DownloadError as exc:
            raise WeightsError(
                f"No pretrained {arch} weights: {name} is not in {cache_dir()} and the download failed ({exc}). "
                f"Three ways out: run `python -m labutils fetch` (or `python -m labutils fetch --from DIR` "
                f"to copy from a folder); copy {name} from {weights_url(name)} into {cache_dir()}; "
                f'or run untrained on purpose with LABUTILS_WEIGHTS=random (weights="random")'
            ) from exc
    return read_state_dict(path)


def _is_safetensors(start: bytes, size: int) -> bool:
    """A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then ``{``."""
    return len(start) == 9 and start[8:9] == b"{" and 0 < int.from_bytes(start[:8], "little") < size


def _files(arch: str) -> tuple[str, ...]:
    """The accepted file names of ``arch``, or ``ModelError`` for an unknown architecture."""
    try:
        return WEIGHT_FILES[arch]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {arch!r}: choose one of {', '.join(WEIGHT_FILES)}") from None


def _name_hash(filename: str) -> str | None:
    """The SHA-256 prefix written in a torch hub file name (``vgg16-397923af.pth`` -> ``397923af``), or None."""
    match = _NAME_HASH.search(filename)
    return match.group(1) if match else None
