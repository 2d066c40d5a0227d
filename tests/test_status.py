"""labutils.status: the environment check of notebook 00, on throw-away folders.

Every test points TORCH_HOME (the weight cache) and LABUTILS_DATA (the samples) at empty
temporary folders, and the repository's data/ folder at a temporary copy of a small
manifest (two made-up samples with their real SHA-256), so what is found is exactly what
the test put there. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from labutils import data
from labutils.status import lab_status, report

SAMPLES = {"cat_dog.jpg": b"bull mastiff and tiger cat", "bathroom.jpg": b"a bathroom"}


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Path:
    """Empty weight cache and sample folder; a manifest listing SAMPLES; LABUTILS_WEIGHTS unset."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LABUTILS_DATA", str(tmp_path / "samples"))
    monkeypatch.delenv("LABUTILS_WEIGHTS", raising=False)
    monkeypatch.delenv("LABUTILS_MIRROR", raising=False)
    (tmp_path / "samples").mkdir()
    repo_data = tmp_path / "repo_data"
    repo_data.mkdir()
    rows = "\n".join(f"| {name} | http://127.0.0.1:9/{name} | test |" for name in SAMPLES)
    (repo_data / "SOURCES.md").write_text(f"| file | source URL | notes |\n| --- | --- | --- |\n{rows}\n")
    (repo_data / "SHA256SUMS").write_text(
        "".join(f"{hashlib.sha256(content).hexdigest()}  {name}\n" for name, content in SAMPLES.items()))
    monkeypatch.setattr(data, "data_dir", lambda: repo_data)
    monkeypatch.setattr(data, "manifest_dir", lambda: repo_data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path


def put_weights(lab: Path, name: str) -> Path:
    """A file with a weight file's name in the cache (status only looks; loading would verify it)."""
    folder = lab / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\0" * 2048)
    return path


def put_samples(lab: Path, **overrides: bytes) -> None:
    for name, content in SAMPLES.items():
        (lab / "samples" / name).write_bytes(overrides.get(name.split(".")[0], content))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_nothing_present_says_what_is_missing_and_how_to_fix_it(lab):
    before = listing(lab)
    found = lab_status()
    text = report(found)

    assert found.missing_weights == ["alexnet", "vgg16"]
    assert found.missing_samples == ["cat_dog.jpg", "bathroom.jpg"]
    assert found.cache_dir == lab / "torch" / "hub" / "checkpoints"
    assert "AlexNet weights: MISSING" in text and "VGG-16 weights: MISSING" in text
    assert "alexnet-owt-7be5be79.pth or alexnet-owt-4df8aa71.pth" in text
    assert f"vgg16-397923af.pth in {lab / 'torch' / 'hub' / 'checkpoints'}" in text
    assert "MISSING (or damaged): cat_dog.jpg, bathroom.jpg" in text
    assert str(lab / "samples") in text  # says where it looked
    for fix in ("python -m labutils fetch", "python -m labutils fetch --from DIR", "LABUTILS_WEIGHTS=random"):
        assert fix in text
    last = text.splitlines()[-1]
    assert last.startswith("Verdict: NOT READY")
    assert "2 weight file(s) missing" in last and "2 sample image(s) missing" in last
    assert listing(lab) == before  # looked only: nothing downloaded or created


def test_a_cached_weight_file_is_reported_present(lab):
    vgg = put_weights(lab, "vgg16-397923af.pth")
    found = lab_status()
    text = report(found)

    assert found.weight_files == {"alexnet": None, "vgg16": vgg}
    assert f"VGG-16 weights: present, {vgg} (0.0 MB)" in text
    assert "AlexNet weights: MISSING" in text
    assert "1 weight file(s) missing" in text.splitlines()[-1]


def test_the_seeds_alexnet_file_counts_as_present(lab):
    seed_file = put_weights(lab, "alexnet-owt-4df8aa71.pth")
    assert lab_status().weight_files["alexnet"] == seed_file


def test_everything_present_is_ready(lab):
    alexnet, vgg = put_weights(lab, "alexnet-owt-7be5be79.pth"), put_weights(lab, "vgg16-397923af.pth")
    put_samples(lab)
    found = lab_status()
    text = report(found)

    assert found.weight_files == {"alexnet": alexnet, "vgg16": vgg}
    assert found.samples == {name: lab / "samples" / name for name in SAMPLES}
    assert f"present: cat_dog.jpg, bathroom.jpg (in {lab / 'samples'})" in text
    assert "MISSING" not in text and "What to do" not in text
    assert text.splitlines()[-1] == "Verdict: READY: pretrained weights and sample images are all here."


def test_a_damaged_sample_is_not_counted(lab):
    put_samples(lab, bathroom=b"another picture")
    found = lab_status()
    assert found.missing_samples == ["bathroom.jpg"]
    assert "MISSING (or damaged): bathroom.jpg" in report(found)


def test_untrained_on_purpose_is_ready_without_weights(lab, monkeypatch):
    monkeypatch.setenv("LABUTILS_WEIGHTS", "random")
    put_samples(lab)
    found = lab_status()
    text = report(found)

    assert found.untrained
    assert "UNTRAINED, on purpose" in text
    assert "MISSING (not needed while LABUTILS_WEIGHTS=random)" in text
    assert "To see what the networks learned: python -m labutils fetch" in text
    assert text.splitlines()[-1].startswith("Verdict: READY, UNTRAINED ON PURPOSE")


def test_untrained_but_samples_missing_is_not_ready(lab, monkeypatch):
    monkeypatch.setenv("LABUTILS_WEIGHTS", "random")
    text = report(lab_status())
    last = text.splitlines()[-1]
    assert last.startswith("Verdict: NOT READY") and "2 sample image(s) missing" in last
    assert "weight file(s) missing" not in last
    assert "download the sample images: python -m labutils fetch" in text


def test_a_weights_path_setting_is_flagged(lab, monkeypatch):
    monkeypatch.setenv("LABUTILS_WEIGHTS", str(lab / "nowhere.pth"))
    put_samples(lab)
    text = report(lab_status())
    assert f"LABUTILS_WEIGHTS='{lab / 'nowhere.pth'}' is read as a weight file, and that file DOES NOT EXIST" in text
    assert "Unset LABUTILS_WEIGHTS" in text
    assert text.splitlines()[-1].startswith("Verdict: NOT READY: LABUTILS_WEIGHTS names a single weight file")


def test_device_and_versions(lab, monkeypatch):
    text = report(lab_status())
    assert "Device: CPU" in text
    assert f"torch {torch.__version__}, torchvision " in text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU 9000")
    found = lab_status()
    assert found.device == "CUDA GPU: Test GPU 9000"
    assert "Device: CUDA GPU: Test GPU 9000" in report(found)


def test_unreadable_manifest_is_reported(lab, monkeypatch):
    (data.manifest_dir() / "SHA256SUMS").unlink()
    found = lab_status()
    assert found.samples == {} and "SHA256SUMS" in found.manifest_error
    text = report(found)
    assert "Sample images: UNKNOWN" in text
    assert text.splitlines()[-1].startswith("Verdict: NOT READY: the sample list is unreadable")

