"""The environment check of notebook 00: is everything the lab needs at hand, and what to do if not.

``lab_status()`` looks, without downloading anything, at

- the pretrained weight files of AlexNet and VGG-16 in the torch hub cache (``weights.cache_dir()``),
- the sample images (``data.data_status()``: ``$LABUTILS_DATA``, then ``data.data_dir()``),
- the ``LABUTILS_WEIGHTS`` setting (``imagenet``, the default; ``random``: untrained on purpose; or a file),
- the device (a CUDA GPU or the CPU) and the torch / torchvision versions,

and ``report(status)`` says it in plain words: what is present, what is missing, the exact
command that fixes it, and a one-line verdict::

    print(report(lab_status()))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from . import data, weights
from .errors import LabError
from .models import ARCHITECTURES

FETCH = "python -m labutils fetch"
FETCH_FROM = "python -m labutils fetch --from DIR"
RANDOM = "LABUTILS_WEIGHTS=random"


@dataclass(frozen=True)
class LabStatus:
    """What the lab found on this machine (paths are None where a file is missing)."""

    weights_setting: str  # LABUTILS_WEIGHTS as load_model reads it: "imagenet", "random" or a file path
    cache_dir: Path  # torch.hub.get_dir()/checkpoints, where the weight files belong
    weight_files: dict[str, Path | None]  # "alexnet"/"vgg16" -> the cached file, or None
    expected_files: dict[str, tuple[str, ...]]  # "alexnet"/"vgg16" -> the accepted file names
    samples: dict[str, Path | None]  # sample image name -> its verified copy, or None
    sample_dirs: tuple[Path, ...]  # where the samples are looked for, in order
    manifest_error: str | None  # why the sample list could not be read (None when it could)
    device: str  # "CUDA GPU: <name>" or "CPU"
    torch_version: str
    torchvision_version: str

    @property
    def untrained(self) -> bool:
        """True when LABUTILS_WEIGHTS=random: every model is untrained, on purpose."""
        return self.weights_setting == "random"

    @property
    def missing_weights(self) -> list[str]:
        """The architectures whose weight file is not in the cache."""
        return [arch for arch, path in self.weight_files.items() if path is None]

    @property
    def missing_samples(self) -> list[str]:
        """The sample images with no verified copy."""
        return [name for name, path in self.samples.items() if path is None]


def lab_status() -> LabStatus:
    """Look at weights, samples, settings and device; download nothing, change nothing."""
    try:
        present = data.data_status()
        samples = {name: data.sample_path(name, download=False) if ok else None for name, ok in present.items()}
        manifest_error = None
    except LabError as exc:
        samples, manifest_error = {}, str(exc)
    folder = os.environ.get("LABUTILS_DATA", "").strip()
    sample_dirs = ((Path(folder).expanduser(),) if folder else ()) + (data.data_dir(),)
    if torch.cuda.is_available():
        device = f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    else:
        device = "CPU"
    return LabStatus(
        weights_setting=os.environ.get("LABUTILS_WEIGHTS", "imagenet"),
        cache_dir=weights.cache_dir(),
        weight_files={arch: weights.find_weights(arch) for arch in ARCHITECTURES},
        expected_files={arch: weights.WEIGHT_FILES[arch] for arch in ARCHITECTURES},
        samples=samples,
        sample_dirs=sample_dirs,
        manifest_error=manifest_error,
        device=device,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
    )


def report(status: LabStatus) -> str:
    """The status in plain language: what is present, what is missing, what to do, and a verdict."""
    lines = ["Grad-CAM lab: environment check", ""]
    lines.append(f"torch {status.torch_version}, torchvision {status.torchvision_version}")
    if status.device == "CPU":
        lines.append("Device: CPU (no CUDA GPU found). That is enough: the notebooks are sized for two CPU cores.")
    else:
        lines.append(f"Device: {status.device} (python -m labutils explain uses it; the notebooks run on CPU too).")
    lines += _weights_lines(status) + _sample_lines(status)

    todo = _todo(status)
    if todo:
        lines += ["", "What to do:"] + [f"  - {step}" for step in todo]
    lines += ["", "Verdict: " + _verdict(status)]
    return "\n".join(lines)


# --- the parts of the report -----------------------------------------------------


def _weights_lines(status: LabStatus) -> list[str]:
    """The weights setting, then one line per weight file."""
    setting = status.weights_setting
    if setting == "imagenet":
        lines = ["Weights: LABUTILS_WEIGHTS is 'imagenet' (the default): the pretrained ImageNet weights are used."]
    elif status.untrained:
        lines = ["Weights: LABUTILS_WEIGHTS=random: the models are UNTRAINED, on purpose. Every notebook runs, but",
                 "  the predictions and maps show the pipeline, not what the networks learned."]
    else:
        exists = "exists" if Path(setting).expanduser().is_file() else "DOES NOT EXIST"
        lines = [f"Weights: LABUTILS_WEIGHTS={setting!r} is read as a weight file, and that file {exists}.",
                 "  One file fits only one architecture, so loading the other model will fail; use "
                 "'imagenet' (or unset it) or 'random'."]
    for arch, path in status.weight_files.items():
        title = ARCHITECTURES[arch].title
        if path is not None:
            size = path.stat().st_size / 1024**2
            lines.append(f"  {title} weights: present, {path} ({size:.1f} MB)")
        else:
            names = " or ".join(status.expected_files[arch])
            unused = " (not needed while LABUTILS_WEIGHTS=random)" if status.untrained else ""
            lines.append(f"  {title} weights: MISSING{unused}, no {names} in {status.cache_dir}")
    return lines


def _sample_lines(status: LabStatus) -> list[str]:
    """One line for the present samples and one for the missing ones."""
    where = " then ".join(str(d) for d in status.sample_dirs)
    if status.manifest_error:
        return [f"Sample images: UNKNOWN, the list of samples could not be read: {status.manifest_error}"]
    lines = [f"Sample images (looked for in {where}):"]
    present = [name for name, path in status.samples.items() if path is not None]
    if present:
        folders = sorted({str(status.samples[name].parent) for name in present})
        lines.append(f"  present: {', '.join(present)} (in {', '.join(folders)})")
    if status.missing_samples:
        lines.append(f"  MISSING (or damaged): {', '.join(status.missing_samples)}")
    return lines


def _todo(status: LabStatus) -> list[str]:
    """The steps that fix what is missing, as exact commands."""
    needs_weights = bool(status.missing_weights) and not status.untrained
    missing = (["the weight files"] if needs_weights else []) + (["the sample images"] if status.missing_samples else [])
    steps = []
    if status.manifest_error:
        steps.append("Reinstall labutils from the lab's release (its README, 'Set up'): the sample list ships inside "
                     "the package, in labutils/manifest/.")
    if missing:
        what = " and ".join(missing)
        steps += [
            f"Where there is internet, download {what}: {FETCH}",
            f"Without internet, copy them from a folder that holds them (a USB stick, a class share): {FETCH_FROM}",
        ]
        if needs_weights:
            steps.append(f"Or run untrained on purpose: start JupyterLab with {RANDOM} (the maps then show the "
                         "pipeline only). Otherwise load_model tries to download the missing weights on first use.")
    elif status.untrained and status.missing_weights:
        steps.append(f"To see what the networks learned: {FETCH}, then start JupyterLab without {RANDOM}.")
    if status.weights_setting not in ("imagenet", "random"):
        steps.append("Unset LABUTILS_WEIGHTS (or set it to imagenet or random) before starting JupyterLab.")
    return steps


def _verdict(status: LabStatus) -> str:
    """One line: ready, ready but untrained, or what is missing."""
    problems = []
    if status.manifest_error:
        problems.append("the sample list is unreadable")
    if status.weights_setting not in ("imagenet", "random"):
        problems.append("LABUTILS_WEIGHTS names a single weight file")
    if status.missing_weights and not status.untrained:
        problems.append(f"{len(status.missing_weights)} weight file(s) missing")
    if status.missing_samples:
        problems.append(f"{len(status.missing_samples)} sample image(s) missing")
    if problems:
        return "NOT READY: " + ", ".join(problems) + " (see 'What to do' above)."
    if status.untrained:
        return "READY, UNTRAINED ON PURPOSE: everything runs, but no figure shows what the networks learned."
    return "READY: pretrained weights and sample images are all here."
