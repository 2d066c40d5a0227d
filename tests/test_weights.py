"""labutils.weights: cache, mirror, verification and safe loading, all offline (127.0.0.1 only).

The real weight files cannot be downloaded here, and a file we generate cannot match the
SHA-256 prefix written in the real names (``alexnet-owt-7be5be79.pth``). So the tests
serve generated files under names built the torch hub way from their own hash,
``alexnet-owt-<first 8 hex digits of the file's SHA-256>.pth``, and point
``WEIGHT_FILES["alexnet"]`` at that name with monkeypatch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from conftest import safetensors_bytes
from httpserver import FileServer, closed_port_url  # tests/ is on sys.path (pytest rootdir-less import)
from torchvision.models import alexnet, vgg16

from labutils import weights
from labutils.download import sha256_of
from labutils.errors import ModelError, WeightsError
from labutils.weights import (
    cache_dir, download_weights, find_weights, install_weights_from, load_weights_into,
    pretrained_state_dict, read_state_dict, weights_url,
)


def hub_named(path: Path, stem: str = "alexnet-owt") -> Path:
    """Rename ``path`` to ``<stem>-<its sha256 prefix>.pth`` (the torch hub convention)."""
    return path.rename(path.with_name(f"{stem}-{sha256_of(path)[:8]}.pth"))


def cache_listing() -> list[str]:
    folder = cache_dir()
    return sorted(os.listdir(folder)) if folder.exists() else []


class Evil:
    """A pickle that creates ``marker`` when unpickled: what a malicious .pth file can do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LABUTILS_MIRROR", raising=False)
    return tmp_path / "torch"


@pytest.fixture
def served(tmp_path) -> Path:
    folder = tmp_path / "served"
    folder.mkdir()
    return folder


@pytest.fixture
def server(served, monkeypatch):
    with FileServer(served) as srv:
        monkeypatch.setenv("LABUTILS_MIRROR", srv.url)
        yield srv


@pytest.fixture
def small_weights(served, monkeypatch) -> tuple[Path, dict[str, torch.Tensor]]:
    """A small state_dict served as the AlexNet file (quick to send, cut and corrupt)."""
    sd = {"w": torch.arange(50_000, dtype=torch.float32), "b": torch.ones(3)}
    torch.save(sd, served / "tmp.pth")
    path = hub_named(served / "tmp.pth")
    monkeypatch.setitem(weights.WEIGHT_FILES, "alexnet", (path.name,))
    return path, sd


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = alexnet(weights=None).eval()
    folder = tmp_path_factory.mktemp("alexnet")
    torch.save(model.state_dict(), folder / "tmp.pth")
    return hub_named(folder / "tmp.pth"), model


def test_cache_dir_is_torch_hub_checkpoints_under_torch_home(torch_home):
    assert cache_dir() == torch_home / "hub" / "checkpoints"


def test_torch_hub_finds_a_file_in_our_cache(tmp_path):
    # torchvision's weights.get_state_dict() goes through load_state_dict_from_url: it must find our files.
    torch.save({"x": torch.ones(2)}, tmp_path / "t.pth")
    path = hub_named(tmp_path / "t.pth", "tiny")
    cache_dir().mkdir(parents=True)
    path.rename(cache_dir() / path.name)
    sd = torch.hub.load_state_dict_from_url(closed_port_url() + path.name, check_hash=True, weights_only=True)
    assert torch.equal(sd["x"], torch.ones(2))


def test_weights_url_default_and_mirror(monkeypatch):
    assert weights_url("vgg16-397923af.pth") == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert weights_url("alexnet-owt-7be5be79.pth") == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert weights.WEIGHT_FILES["alexnet"] == ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth")
    for mirror in ("http://10.0.0.5:8000/lab", "http://10.0.0.5:8000/lab/"):
        monkeypatch.setenv("LABUTILS_MIRROR", mirror)
        assert weights_url("vgg16-397923af.pth") == "http://10.0.0.5:8000/lab/vgg16-397923af.pth"


def test_find_weights_accepts_seed_and_current_alexnet_files():
    assert find_weights("alexnet") is None
    cache_dir().mkdir(parents=True)
    (cache_dir() / "alexnet-owt-4df8aa71.pth").write_bytes(b"seed")
    assert find_weights("alexnet") == cache_dir() / "alexnet-owt-4df8aa71.pth"
    (cache_dir() / "alexnet-owt-7be5be79.pth").write_bytes(b"current")
    assert find_weights("alexnet") == cache_dir() / "alexnet-owt-7be5be79.pth"
    assert find_weights("vgg16") is None
    with pytest.raises(ModelError, match="resnet"):
        find_weights("resnet")


def test_end_to_end_download_verify_load(alexnet_file, monkeypatch):
    path, original = alexnet_file
    monkeypatch.setitem(weights.WEIGHT_FILES, "alexnet", (path.name,))
    with FileServer(path.parent) as server:
        monkeypatch.setenv("LABUTILS_MIRROR", server.url)
        sd = pretrained_state_dict("alexnet", progress=True)
        pretrained_state_dict("alexnet", progress=False)  # second time: from the cache, no request
    assert server.requests == ["/" + path.name]
    assert cache_listing() == [path.name]
    assert sha256_of(cache_dir() / path.name) == sha256_of(path)
    torch.manual_seed(1)
    model = alexnet(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(model(x), original(x))  # differently initialised before loading
        load_weights_into(model, sd, "alexnet")
        assert torch.equal(model(x), original(x))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_served_is_refused_and_not_cached(small_weights, server, damage):
    path, _ = small_weights
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum") as err:
        pretrained_state_dict("alexnet", progress=False)
    assert path.name in str(err.value) and str(cache_dir()) in str(err.value)
    assert cache_listing() == []


@pytest.mark.parametrize("on_cut", ["close", "hang"])
def test_download_killed_halfway_then_next_attempt_succeeds(small_weights, server, monkeypatch, on_cut):
    path, sd = small_weights
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.5)
    server.cut_after, server.on_cut = path.stat().st_size // 2, on_cut
    start = time.monotonic()
    with pytest.raises(WeightsError, match="closed" if on_cut == "close" else "timed out"):
        pretrained_state_dict("alexnet", progress=False)
    assert time.monotonic() - start < 5
    assert cache_listing() == []
    server.cut_after = None
    got = pretrained_state_dict("alexnet", progress=False)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert cache_listing() == [path.name]


def test_missing_weights_message_names_file_folder_url_and_three_ways_out(monkeypatch):
    monkeypatch.setenv("LABUTILS_MIRROR", closed_port_url())
    with pytest.raises(WeightsError) as err:
        pretrained_state_dict("vgg16", progress=False)
    msg = str(err.value)
    for part in ("vgg16-397923af.pth", str(cache_dir()), weights_url("vgg16-397923af.pth"),
                 "python -m labutils fetch", "--from", "copy", "LABUTILS_WEIGHTS=random", 'weights="random"'):
        assert part in msg, part
    assert "\n" not in msg
    assert weights_url("vgg16-397923af.pth").startswith("http://127.0.0.1:")
    assert cache_listing() == []


def test_download_weights_fetches_first_name(small_weights, server):
    path, _ = small_weights
    assert download_weights("alexnet", progress=False) == cache_dir() / path.name
    assert server.requests == ["/" + path.name]


def test_install_weights_from_folder(small_weights, tmp_path):
    path, sd = small_weights
    installed = install_weights_from(path.parent, "alexnet")
    assert installed == cache_dir() / path.name and installed.read_bytes() == path.read_bytes()
    assert install_weights_from(cache_dir(), "alexnet") == installed  # already there: verified in place
    with pytest.raises(WeightsError, match=str(tmp_path / "empty")):
        install_weights_from(tmp_path / "empty", "alexnet")


def test_install_weights_from_refuses_damaged_copy(small_weights):
    path, _ = small_weights
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="checksum"):
        install_weights_from(path.parent, "alexnet")
    assert cache_listing() == []


def test_read_state_dict_refuses_code_running_pickle(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"w": Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="not a plain state_dict.*not loaded"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    # control: the payload is real, an unsafe load does create its marker
    torch.save({"w": Evil(tmp_path / "control")}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert (tmp_path / "control").exists()


def test_read_state_dict_refuses_truncated_text_and_non_dict(tmp_path):
    torch.save({"w": torch.ones(1000)}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:500])
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    for name in ("cut.pth", "notes.pth", "list.pth"):
        with pytest.raises(WeightsError, match=name):
            read_state_dict(tmp_path / name)
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")


def test_read_state_dict_checks_name_checksum(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "t.pth")
    good = hub_named(tmp_path / "t.pth", "tiny")
    assert torch.equal(read_state_dict(good)["w"], torch.ones(3))
    bad = good.rename(tmp_path / "tiny-00000000.pth")
    with pytest.raises(WeightsError, match="checksum.*00000000"):
        read_state_dict(bad)


def test_vgg16_weights_into_alexnet_are_refused():
    with torch.device("meta"):  # vgg16's names and shapes, without allocating 138M parameters
        vgg_sd = vgg16(weights=None).state_dict()
    model = alexnet(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"alexnet architecture \(missing: features\.3\.weight"):
        load_weights_into(model, vgg_sd, "alexnet")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_wrong_shape_loads_nothing():
    model = alexnet(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: torch.zeros_like(v) for k, v in before.items()}
    sd["classifier.6.weight"] = torch.zeros(10, 4096)  # a 10-class head
    with pytest.raises(WeightsError, match=r"classifier.6.weight \(10, 4096\) instead of \(1000, 4096\)"):
        load_weights_into(model, sd, "alexnet")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not even features.0


# ---------------------------------------------------------------- issue 13: values and formats


@pytest.mark.parametrize(
    "values, words",
    [
        ({"w": torch.tensor([1.0, float("nan")])}, ["not finite", "w"]),
        ({"w": torch.ones(2), "b": torch.tensor([float("inf")])}, ["not finite", "b"]),
        ({"w": torch.eye(3).to_sparse()}, ["sparse tensors (w)", "to_dense()"]),
    ],
    ids=["nan", "inf", "sparse"],
)
def test_read_state_dict_refuses_values_that_cannot_work(tmp_path, values, words):
    torch.save(values, tmp_path / "w.pth")
    with pytest.raises(WeightsError) as info:
        weights.read_state_dict(tmp_path / "w.pth")
    assert all(w in str(info.value) for w in words), str(info.value)


def test_safetensors_bytes_in_a_pth_file_are_named_as_such(tmp_path):
    (tmp_path / "model.pth").write_bytes(safetensors_bytes({"w": torch.ones(4)}))
    with pytest.raises(WeightsError, match="model.pth holds safetensors data, not a PyTorch .pth file"):
        weights.read_state_dict(tmp_path / "model.pth")


def test_an_unreadable_weights_file_is_a_permission_error(tmp_path, monkeypatch):
    """chmod 000 does not stop root (the CI runs as root): the refusal of the operating system is simulated."""
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pth")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "open", refuse, raising=False)
    with pytest.raises(WeightsError, match="w.pth cannot be read: permission denied") as info:
        weights.read_state_dict(tmp_path / "w.pth")
    assert "fetch it again" not in str(info.value)
