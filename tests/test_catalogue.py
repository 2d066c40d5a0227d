"""The catalogue of bad and unusual inputs (issue 13): one table row per input, through the API and the CLI.

Each API row is (input, the exception class, a fragment of the message that names the real cause); each
CLI row is (arguments, a fragment): ``python -m labutils explain`` must exit with status 2, print exactly
one line on stderr, no traceback, and leave the --out folder as it was. The unusual inputs that are
accepted have their own rows, with the answer they must give.

Every image is generated here (PIL); every model is untrained (``weights="random"``) or a tiny seeded net.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_model_unchanged, assert_no_hooks, safetensors_bytes
from PIL import Image
from torch import nn

from labutils import gradcam, guided_backprop, guided_gradcam, load_model
from labutils.cli import main
from labutils.errors import ClassError, ImageError, ImageNotFoundError, LayerError, ModelError, WeightsError
from labutils.gradcam import class_targets, model_input
from labutils.images import from_pil, load_image, load_images
from labutils.models import default_layer, min_input_size, resolve_class
from labutils.weights import read_state_dict

RANDOM = ["--model", "alexnet", "--weights", "random"]


def noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of bad and unusual files, all generated."""
    root = tmp_path_factory.mktemp("catalogue")
    Image.fromarray(noise(0, (120, 160, 3))).save(root / "ok.png")
    whole = (root / "ok.png").read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "page.png").write_text("<html>404</html>\n")
    (root / "folder.jpg").mkdir()
    os.mkfifo(root / "fifo.jpg")
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    Image.fromarray(np.full((30, 40), 2**30, np.int32)).save(root / "int32.tif")
    Image.fromarray(np.full((30, 40), 0.5, np.float32)).save(root / "float.tif")
    Image.new("RGB", (7, 100)).save(root / "thin.png")
    alexnet_keys = load_model("alexnet", weights="random").state_dict()
    nan = {k: v.clone() for k, v in alexnet_keys.items()}
    nan["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, root / "nan.pth")
    torch.save({k: v.to_sparse() if v.dim() == 2 else v for k, v in alexnet_keys.items()}, root / "sparse.pth")
    (root / "safe.pth").write_bytes(safetensors_bytes({"features.0.weight": torch.ones(2, 2)}))
    torch.save([torch.ones(2)], root / "list.pth")
    return root


# ---------------------------------------------------------------- API: classes


CLASS_ROWS = [  # (classes, number of images, error, message fragment)
    ("--5", 1, ClassError, "'--5' is not a class index: write an index as plain decimal digits"),
    ("²", 1, ClassError, "'²' is not a class index"),
    ("+3", 1, ClassError, "'+3' is not a class index"),
    ("0x10", 1, ClassError, "'0x10' is not a class index"),
    ("1e2", 1, ClassError, "'1e2' is not a class index"),
    (" 7", 1, ClassError, "' 7' is not a class index"),
    ("٣", 1, ClassError, "'٣' is not a class index"),  # an Arabic-Indic digit three
    ("1.5", 1, ClassError, "'1.5' is not a class index"),
    ("-7", 1, ClassError, "class index -7 is out of range"),
    ("1000", 1, ClassError, "class index 1000 is out of range: ImageNet classes are 0..999"),
    ("CARDIGAN", 1, ClassError, "matches several ImageNet classes (264 'Cardigan', 474 'cardigan')"),
    ("cardiGAN", 1, ClassError, "matches several ImageNet classes (264 'Cardigan', 474 'cardigan')"),
    ("tiger kat", 1, ClassError, "did you mean 'tiger cat'"),
    (3.0, 1, ClassError, "class 3.0 is not a class index or name"),
    (True, 1, ClassError, "class True is not a class index or name"),
    ({"c": 1}, 1, ClassError, "is not a class index or name"),
    ([243, [1]], 2, ClassError, "mix single classes and lists"),
    ([[243], 1], 2, ClassError, "mix single classes and lists"),
    ([[243, 1], [2]], 2, ClassError, "2 lists of the same non-zero length"),
    ([243, 1, 2], 2, ClassError, "got 3 classes for a batch of 2 images"),
    ([], 1, ClassError, "no class given"),
    (torch.tensor(2.5), 1, ClassError, "class 2.5 is not a class index or name"),
    (torch.tensor([9.5, 2.0]), 2, ClassError, "class 9.5 is not a class index or name"),  # not "a mix"
    ([9, None], 2, ClassError, "class None is not a class index or name"),
]


@pytest.mark.parametrize("classes, n, error, fragment", CLASS_ROWS, ids=lambda v: repr(v)[:20])
def test_api_bad_class(classes, n, error, fragment, alexnet, images, snapshots):
    with pytest.raises(error) as info:
        gradcam(alexnet, images[:n], classes)
    assert fragment in str(info.value)
    assert_model_unchanged(alexnet, snapshots["alexnet"], outputs=False)


ACCEPTED_CLASSES = [  # unusual spellings that are classes, and which class
    ("cardigan", 474),  # the sweater: an exact-case match wins
    ("Cardigan", 264),  # the corgi
    ("crane", 517),  # the machine; the bird is "crane bird"
    ("crane bird", 134),
    ("Maillot", 638),  # one class ignoring case ("maillot"), though "maillot tank suit" exists
    ("  tiger   cat ", 282),  # spaces do not count
    ("TIGER CAT", 282),
    ("0243", 243),
    (np.int64(243), 243),
    (torch.tensor(243), 243),
]


@pytest.mark.parametrize("name, index", ACCEPTED_CLASSES, ids=lambda v: repr(v)[:20])
def test_api_unusual_class_spellings_that_are_classes(name, index):
    assert resolve_class(name) == index
    assert class_targets(name, 2).tolist() == [[index], [index]]


def test_cardigan_is_the_only_name_two_classes_share_ignoring_case():
    """torchvision's category list, checked for every name: only Cardigan / cardigan collide ignoring case,
    and each of the 1000 names resolves to its own index."""

    names = torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"]
    folded: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        folded.setdefault(n.casefold(), []).append(i)
    assert {k: v for k, v in folded.items() if len(v) > 1} == {"cardigan": [264, 474]}
    assert [resolve_class(n) for n in names] == list(range(1000))
    assert [resolve_class(n.upper()) for n in names if n.casefold() != "cardigan"] == [
        i for i, n in enumerate(names) if n.casefold() != "cardigan"]


# ---------------------------------------------------------------- API: image tensors


class TinyNet(nn.Module):
    """A seeded miniature CNN: features (conv, ReLU, max-pool), avgpool, classifier of 10 classes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tiny_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyNet().eval()


TENSOR_ROWS = {  # name: (make the input from a (2, 3, 224, 224) batch, error, fragment)
    "8x8": (lambda x: x[..., :8, :8], ImageError, "8x8 pixels, smaller than the 63x63 this model needs"),
    "32x32": (lambda x: x[..., :32, :32], ImageError, "32x32 pixels, smaller than the 63x63"),
    "62x224": (lambda x: x[..., :62, :], ImageError, "62x224 pixels, smaller than the 63x63"),
    "meta": (lambda x: x.to("meta"), ImageError, "on the meta device"),
    "NaN": (lambda x: x.index_fill(3, torch.tensor([5]), float("nan")), ImageError, "NaN or infinite"),
    "-inf": (lambda x: x.index_fill(2, torch.tensor([0]), float("-inf")), ImageError, "NaN or infinite"),
    "complex": (lambda x: x.to(torch.complex64), ImageError, "RGB images (N, 3, H, W), got (2, 3, 224, 224) complex64"),
    "bool": (lambda x: x > 0, ImageError, "got (2, 3, 224, 224) bool"),
    "uint8": (lambda x: (x * 50).to(torch.uint8), ImageError, "got (2, 3, 224, 224) uint8"),
    "5-D": (lambda x: x[None], ImageError, "got (1, 2, 3, 224, 224)"),
    "RGBA": (lambda x: torch.cat([x, x[:, :1]], 1), ImageError, "got (2, 4, 224, 224)"),
    "list": (lambda x: x.tolist(), ImageError, "got list"),
    "empty batch": (lambda x: x[:0], ImageError, "the batch of images is empty"),
}


@pytest.mark.parametrize("name", list(TENSOR_ROWS))
@pytest.mark.parametrize("method", ["gradcam", "guided-backprop", "guided-gradcam"])
def test_api_bad_image_tensor(name, method, alexnet, images, snapshots):
    change, error, fragment = TENSOR_ROWS[name]
    call = {"gradcam": gradcam, "guided-backprop": guided_backprop, "guided-gradcam": guided_gradcam}[method]
    with pytest.raises(error) as info:
        call(alexnet, change(images.clone()), 243)
    assert fragment in str(info.value)
    assert_model_unchanged(alexnet, snapshots["alexnet"], outputs=False)


def test_api_minimum_sizes_come_from_the_layers(alexnet, vgg16):
    """63 for AlexNet, 32 for VGG-16: the sizes at which torch itself starts to fail, one pixel lower."""
    for model, side in ((alexnet, 63), (vgg16, 32)):
        assert min_input_size(model) == side
        with torch.no_grad():
            model.features(torch.zeros(1, 3, side, side))
            with pytest.raises(RuntimeError):
                model.features(torch.zeros(1, 3, side - 1, side - 1))
    assert min_input_size(tiny_net()) == 2
    assert min_input_size(nn.Linear(3, 3)) is None  # not a layout it can follow: no size check


@pytest.mark.parametrize("layer, fragment", [
    ("", "no layer ''"), ("features.99", "no layer 'features.99'"), (11, "no layer 11"),
    ("features.\u00b2", "no layer 'features.\u00b2'"),  # a superscript two: str.isdigit() says it is a digit
    ("unused", "layer 'unused' did not run in the model's forward pass"),
])
@pytest.mark.parametrize("method", ["gradcam", "gradcam-autograd", "guided-gradcam"])
def test_api_bad_layer(layer, fragment, method, alexnet, images, snapshots):
    call = {"gradcam": gradcam, "gradcam-autograd": functools.partial(gradcam, shortcut=False),
            "guided-gradcam": guided_gradcam}[method]
    alexnet.unused = nn.ReLU()  # a module the forward pass never calls
    try:
        with pytest.raises(LayerError) as info:
            call(alexnet, images[:1], 243, layer)
    finally:
        del alexnet.unused
    assert fragment in str(info.value)
    assert_model_unchanged(alexnet, snapshots["alexnet"], outputs=False)


@pytest.mark.parametrize("method", ["gradcam", "gradcam-autograd", "guided-gradcam", "guided-backprop"])
def test_api_a_class_beyond_a_fine_tuned_head_is_refused(method, alexnet, images):
    call = {"gradcam": gradcam, "gradcam-autograd": functools.partial(gradcam, shortcut=False),
            "guided-gradcam": guided_gradcam, "guided-backprop": guided_backprop}[method]
    ten = copy.deepcopy(alexnet)
    ten.classifier[6] = nn.Linear(4096, 10)
    for classes in (500, [[3, 10]]):
        with pytest.raises(ClassError, match=r"out of range for this model: it has 10 outputs \(0\.\.9\)"):
            call(ten, images[:1], classes)
    assert call(ten, images[:1], 9).classes.tolist() == [[9]]
    assert_no_hooks(ten)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated, still what users may hand in
def test_api_what_hooks_cannot_explain_is_refused(alexnet, images):
    """Not a module, or TorchScript: a traced model runs no Python hooks, so Guided Backpropagation's
    rule would silently not apply (it returned the plain gradient)."""
    traced = torch.jit.trace(copy.deepcopy(alexnet), images[:1], check_trace=False)
    for call in (gradcam, guided_gradcam, guided_backprop):
        with pytest.raises(ModelError, match="TorchScript models"):
            call(traced, images[:1], 3)
        with pytest.raises(ModelError, match="expected a torch.nn.Module, got str"):
            call("alexnet", images[:1], 3)


def test_other_vggs_are_not_taken_for_vgg16():
    """torchvision's VGG class also builds VGG-11/13/19 and the BN variants: their last ReLU is elsewhere."""
    with torch.device("meta"):  # no memory, no values: only the layout counts
        assert default_layer(torchvision.models.vgg16()) == "features.29"
        assert default_layer(torchvision.models.alexnet()) == "features.11"
        for name, layers in (("vgg19", 37), ("vgg16_bn", 44), ("vgg13", 25)):
            with pytest.raises(ModelError, match=f"VGG with {layers} feature layers is not one of the lab's models"):
                default_layer(getattr(torchvision.models, name)())


def test_api_a_wrapped_model_keeps_the_minimum_size_check(alexnet, images):
    """Wrappers have no ``features`` of their own: the size check found none and torch's pooling error came instead."""
    small = images[:1, :, :40, :40]
    for wrapped, layer in ((nn.Sequential(alexnet, nn.Softmax(1)), "0.features.11"),
                           (nn.DataParallel(alexnet), "module.features.11")):
        with pytest.raises(ImageError, match="the images are 40x40 pixels, smaller than the 63x63 this model needs"):
            gradcam(wrapped, small, 3, layer)


def test_api_model_on_the_meta_device_is_refused(images):
    with torch.device("meta"):
        model = TinyNet()
    with pytest.raises(ModelError, match="the model's weights are on the meta device"):
        gradcam(model, images[:1], 1, "features.4")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_api_images_of_other_float_types_are_converted_to_the_models(dtype):
    net = tiny_net()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = gradcam(net, x.to(dtype).float(), [1, 3], "features.4").raw  # the same values, in float32
    assert reference.abs().max() > 0
    result = gradcam(net, x.to(dtype), [1, 3], "features.4")
    assert result.raw.dtype == torch.float32
    torch.testing.assert_close(result.raw, reference, rtol=0, atol=1e-5 * reference.abs().max().item())
    assert model_input(net, x.to(dtype)).dtype == torch.float32


def test_api_a_half_model_takes_float32_images():
    net = tiny_net()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = gradcam(net, x, 7, "features.4").raw
    half = tiny_net().half()
    result = gradcam(half, x, 7, "features.4")
    assert model_input(half, x).dtype == torch.float16
    torch.testing.assert_close(result.raw.float(), reference, rtol=0, atol=2e-2 * reference.abs().max().item())
    assert half.features[0].weight.dtype == torch.float16  # the model is left in half precision


def test_api_a_model_without_parameters_runs_on_the_cpu():
    """Max-pooling and a fixed linear map as a buffer: no parameter to tell the device; the answer is known."""

    class NoParameters(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))

        def forward(self, x):
            return self.features(x).sum(dim=(2, 3))  # class c's score: the sum of channel c's pooled map

    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    result = gradcam(NoParameters(), x, 1, "features.1")
    # dy^1/dA^k is 1 for channel 1 and 0 for the others: alpha = (0, 1, 0), L^1 = channel 1 of A
    expected = nn.functional.max_pool2d(x.relu(), 2)[0, 1]
    torch.testing.assert_close(result.raw[0, 0], expected)


# ---------------------------------------------------------------- API: image files and pictures


def long_path(bad: Path) -> Path:
    return bad / ("x" * 300 + ".jpg")


FILE_ROWS = [  # (make the call from the folder of bad files, error, fragment)
    (lambda b: load_image(None), ImageError, "expects the path of an image file (str or Path), got NoneType"),
    (lambda b: load_image(Image.new("RGB", (9, 9))), ImageError, "use from_pil(picture)"),
    (lambda b: load_image(b / "ok.png", size=0), ImageError, "a whole number of pixels from 8 to 2048, got 0"),
    (lambda b: load_image(b / "ok.png", size=10**6), ImageError, "got 1000000"),  # was killed for memory (23 GB)
    (lambda b: load_image(""), ImageError, "the image path is empty"),  # was ". is a folder"
    (lambda b: load_image(str(b / "a\0b.jpg")), ImageError, "is not a valid file path (it holds a NUL character)"),
    (lambda b: load_image(b / "ok.png", size=-5), ImageError, "got -5"),
    (lambda b: load_image(b / "ok.png", size=2.5), ImageError, "got 2.5"),
    (lambda b: load_image(b / "ok.png", size=True), ImageError, "got True"),
    (lambda b: from_pil(np.zeros((32, 32, 3), np.uint8)), ImageError, "wrap an array with PIL.Image.fromarray"),
    (lambda b: from_pil(None), ImageError, "from_pil expects a PIL image, got NoneType"),
    (lambda b: load_images(None), ImageError, "load_images expects a path or a list of paths, got NoneType"),
    (lambda b: from_pil(Image.fromarray(np.full((20, 20), 100000, np.int32))), ImageError,
     "integer pixels from 100000 to 100000, beyond 16 bits"),
    (lambda b: load_image(b / "fifo.jpg"), ImageError, "fifo.jpg is not a regular file (a FIFO"),
    (lambda b: load_image(b / "loop_a.jpg"), ImageError, "loop_a.jpg is a loop of symbolic links"),
    (lambda b: load_image(b / "dangling.jpg"), ImageNotFoundError, "dangling.jpg is a symbolic link to"),
    (lambda b: load_image(long_path(b)), ImageError, "is too long (3"),
    (lambda b: load_image(b / "cut.png"), ImageError, "cut.png is truncated or corrupt"),
    (lambda b: load_image(b / "int32.tif"), ImageError, "int32.tif holds 32-bit integer pixels"),
    (lambda b: load_image(b / "float.tif"), ImageError, "float.tif holds 32-bit floating-point pixels"),
    (lambda b: load_image(b / "folder.jpg"), ImageError, "folder.jpg is a folder, not an image file"),
    (lambda b: load_image(b / "empty.jpg"), ImageError, "empty.jpg is empty (0 bytes)"),
    (lambda b: load_image(b / "page.png"), ImageError, "holds text"),
    (lambda b: load_image(b / "thin.png"), ImageError, "only 7x100 pixels"),
    (lambda b: load_image(b / "missing.png"), ImageNotFoundError, "Image file not found"),
]


@pytest.mark.parametrize("row", range(len(FILE_ROWS)))
def test_api_bad_image_file(row, bad):
    call, error, fragment = FILE_ROWS[row]
    with pytest.raises(error) as info:
        call(bad)
    assert fragment in str(info.value)


ACCEPTED_MODES = [  # a flat 20 x 20 picture in an unusual mode, and the 8-bit RGB colour it must become
    (lambda: Image.new("1", (20, 20), 1), (255, 255, 255)),
    (lambda: Image.new("L", (20, 20), 100), (100, 100, 100)),
    (lambda: Image.new("LA", (20, 20), (100, 0)), (255, 255, 255)),  # fully transparent: white
    (lambda: Image.new("LA", (20, 20), (100, 255)), (100, 100, 100)),
    (lambda: Image.new("I;16", (20, 20), 257 * 100), (100, 100, 100)),
    (lambda: Image.new("I", (20, 20), 65535), (255, 255, 255)),
    (lambda: Image.new("CMYK", (20, 20), (0, 0, 0, 0)), (255, 255, 255)),
    (lambda: Image.new("RGBA", (20, 20), (255, 0, 0, 255)), (255, 0, 0)),
]


@pytest.mark.parametrize("row", range(len(ACCEPTED_MODES)))
def test_api_unusual_image_modes_give_the_right_colour(row):
    make, rgb = ACCEPTED_MODES[row]
    lab = from_pil(make())
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    torch.testing.assert_close(lab.tensor[0, :, 100, 100], expected, rtol=0, atol=0.5 / 255 / 0.224)


# ---------------------------------------------------------------- API: weights


WEIGHT_ROWS = [
    ("nan.pth", "not finite (NaN or infinite values in features.0.weight)"),
    ("sparse.pth", "holds sparse tensors (classifier.1.weight, classifier.4.weight, classifier.6.weight)"),
    ("safe.pth", "safe.pth holds safetensors data, not a PyTorch .pth file"),
    ("list.pth", "is not a state_dict"),
]


@pytest.mark.parametrize("name, fragment", WEIGHT_ROWS)
def test_api_bad_weights(name, fragment, bad):
    with pytest.raises(WeightsError) as info:
        load_model("alexnet", bad / name)
    assert fragment in str(info.value)
    with pytest.raises(WeightsError):
        read_state_dict(bad / name)


def test_api_bad_model_names():
    with pytest.raises(ModelError, match="unknown model 'resnet50'"):
        load_model("resnet50", "random")
    with pytest.raises(WeightsError, match="weights '': no such file"):
        load_model("alexnet", "")
    with pytest.raises(WeightsError, match="got int 5"):  # was a TypeError from os.fspath
        load_model("alexnet", 5)


# ---------------------------------------------------------------- the command line


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LABUTILS_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.fixture
def out(tmp_path) -> Path:
    """An output folder holding an earlier result, which must survive untouched."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "earlier.txt").write_text("earlier")
    return folder


CLI_ROWS = [  # (arguments after `explain`, with {b} the folder of bad files; fragment of the one stderr line)
    (["{b}/ok.png", *RANDOM, "--class=--5"], "'--5' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", "²"], "'²' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", "+3"], "'+3' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", "0x10"], "'0x10' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", "1e2"], "'1e2' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", " 7"], "' 7' is not a class index"),
    (["{b}/ok.png", *RANDOM, "--class", "CARDIGAN"], "264 'Cardigan', 474 'cardigan'"),
    (["{b}/ok.png", *RANDOM, "--class", "1000"], "class index 1000 is out of range"),
    (["{b}/ok.png", *RANDOM, "--layer", ""], "--layer is empty"),
    (["{b}/ok.png", *RANDOM, "--layer", "features.99"], "no layer 'features.99'"),
    (["{b}/ok.png", "--model", "alexnet", "--weights", "{b}/nan.pth"], "not finite"),
    (["{b}/ok.png", "--model", "alexnet", "--weights", "{b}/sparse.pth"], "holds sparse tensors"),
    (["{b}/ok.png", "--model", "alexnet", "--weights", "{b}/safe.pth"], "holds safetensors data"),
    (["{b}/cut.png", *RANDOM], "cut.png is truncated or corrupt"),
    (["{b}/fifo.jpg", *RANDOM], "fifo.jpg is not a regular file"),
    (["{b}/loop_a.jpg", *RANDOM], "loop_a.jpg is a loop of symbolic links"),
    (["{b}/dangling.jpg", *RANDOM], "dangling.jpg is a symbolic link to"),
    (["{b}/" + "x" * 300 + ".jpg", *RANDOM], "is too long"),
    (["{b}/int32.tif", *RANDOM], "holds 32-bit integer pixels"),
    (["{b}/thin.png", *RANDOM], "only 7x100 pixels"),
    (["{b}/ok.png", *RANDOM, "--batch-size", "0"], "--batch-size must be at least 1"),
]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line(status: int, stdout: str, stderr: str, fragment: str) -> None:
    assert status == 2
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("row", range(len(CLI_ROWS)), ids=lambda i: " ".join(CLI_ROWS[i][0][1:])[:40])
def test_cli_bad_input(row, bad, out, capsys):
    argv, fragment = CLI_ROWS[row]
    status, stdout, stderr = run(capsys, ["explain", *(a.format(b=bad) for a in argv), "--out", str(out)])
    assert_one_line(status, stdout, stderr, fragment)
    assert os.listdir(out) == ["earlier.txt"] and (out / "earlier.txt").read_text() == "earlier"


def test_cli_out_a_dangling_symlink_is_named_before_any_work(bad, tmp_path, capsys):
    link = tmp_path / "results"
    os.symlink(tmp_path / "nowhere", link)
    status, stdout, stderr = run(capsys, ["explain", str(bad / "ok.png"), *RANDOM, "--out", str(link)])
    assert_one_line(status, stdout, stderr, "results is a symbolic link to")
    assert stdout == "" and link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_cli_read_only_out_is_named_before_the_model_runs(bad, out, capsys, monkeypatch):
    """As root (CI), a mode-0500 folder stays writable: the operating system's refusal is simulated."""
    import labutils.cli as cli

    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if Path(p) == out else real_access(p, mode))
    built = []
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: built.append(a))
    status, stdout, stderr = run(capsys, ["explain", str(bad / "ok.png"), *RANDOM, "--out", str(out)])
    assert_one_line(status, stdout, stderr, f"--out {out}: the folder is not writable (permission denied)")
    assert built == [] and os.listdir(out) == ["earlier.txt"]
    status, stdout, stderr = run(capsys, ["explain", str(bad / "ok.png"), *RANDOM, "--out", str(out / "new" / "sub")])
    assert_one_line(status, stdout, stderr, f"({out}, where it would be made) is not writable")
    assert built == [] and os.listdir(out) == ["earlier.txt"]


def test_cli_unreadable_weights_are_a_permission_error(bad, out, capsys, monkeypatch):
    """chmod 000 does not stop root: the refusal is simulated at labutils.weights' open()."""
    from labutils import weights

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(weights, "open", refuse, raising=False)
    argv = ["explain", str(bad / "ok.png"), "--model", "alexnet", "--weights", str(bad / "nan.pth"), "--out", str(out)]
    status, stdout, stderr = run(capsys, argv)
    assert_one_line(status, stdout, stderr, "nan.pth cannot be read: permission denied")
    assert os.listdir(out) == ["earlier.txt"]


def test_cli_a_folder_of_only_broken_images_lists_each_and_exits_2(bad, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes((bad / "cut.png").read_bytes())
    (folder / "b.jpg").write_bytes(b"")
    status, stdout, stderr = run(capsys, ["explain", str(folder), *RANDOM, "--out", str(tmp_path / "o")])
    assert status == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"error: {folder / 'a.png'} is truncated or corrupt (image file is truncated): the download or copy "
        "probably stopped early; get the file again",
        f"error: {folder / 'b.jpg'} is empty (0 bytes): the download or copy probably failed; get the file again",
        "error: 2 of 2 images could not be explained (listed above)",
    ]
    assert not (tmp_path / "o").exists()  # nothing was made


def test_api_unreadable_image_is_a_permission_error(bad, monkeypatch):
    """chmod 000 does not stop root: the operating system's refusal is simulated at os.access and open."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "ok.png" else real_access(p, mode))
    with pytest.raises(ImageError, match="ok.png cannot be read: permission denied"):
        load_image(bad / "ok.png")
    monkeypatch.setattr(os, "access", real_access)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match="ok.png cannot be read: permission denied"):
        load_image(bad / "ok.png")


def test_api_overlay_uses_its_colormap_and_refuses_what_it_cannot_draw():
    from labutils.errors import OverlayError
    from labutils.overlay import overlay

    picture = Image.new("RGB", (8, 6), (10, 20, 30))
    cam = torch.linspace(0, 1, 48).reshape(6, 8)
    jet, gray = np.asarray(overlay(picture, cam, 1.0)), np.asarray(overlay(picture, cam, 1.0, colormap="gray"))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])  # grey levels
    assert not np.array_equal(jet, gray)
    for kwargs, fragment in (({"colormap": "no-such-map"}, "unknown colormap 'no-such-map'"),
                             ({"alpha": 2}, "alpha must be between 0 and 1, got 2")):
        with pytest.raises(OverlayError, match=fragment):
            overlay(picture, cam, **kwargs)
    with pytest.raises(OverlayError, match=r"expected one \(H, W\) map, got shape \(1, 6, 8\): pick image n"):
        overlay(picture, cam[None])


def test_api_predict_runs_in_eval_mode_and_checks_its_arguments(alexnet, images):
    from labutils import predict

    expected = predict(alexnet, images[:1], 3)
    model = copy.deepcopy(alexnet).train()  # Dropout on: the top-3 changed from call to call
    assert [predict(model, images[:1], 3) for _ in range(3)] == [expected] * 3
    assert all(m.training for m in model.modules())
    for args, error, fragment in (((images[0],), ImageError, "got (3, 224, 224)"),
                                  ((images.numpy(),), ImageError, "got ndarray"),
                                  ((images, 1001), ClassError, "k must be a whole number of classes from 1 to 1000"),
                                  ((images, 2.0), ClassError, "got 2.0")):
        with pytest.raises(error, match=re.escape(fragment)):
            predict(alexnet, *args)


def test_api_figure_and_explanation_image_name_an_index_out_of_range(alexnet, images):
    from labutils.errors import OverlayError
    from labutils.overlay import explanation_image, figure

    e = gradcam(alexnet, images[:1], [[3, 4]])
    picture = Image.new("RGB", (32, 32))
    with pytest.raises(OverlayError, match=r"image index 1 is not one of 0\.\.0: this explanation has 1 image$"):
        figure(alexnet, picture, e, n=1)
    with pytest.raises(OverlayError, match=r"image index -1 is not one of 0\.\.0"):  # ran, showing the last image
        figure(alexnet, picture, e, n=-1)
    with pytest.raises(OverlayError, match=r"class index 5 is not one of 0\.\.1: this explanation has 2 classes$"):
        explanation_image(picture, e, 0, 5)
    assert explanation_image(picture, e, 0, 1).size == (32, 32)


@pytest.mark.parametrize("output, got", [("tuple", "tuple"), ("dict", "dict"), ("squeezed", "shape (1000,)"),
                                         ("spatial", "shape (1, 1000, 2, 2)")])
@pytest.mark.parametrize("method", ["gradcam", "gradcam-autograd", "guided-backprop"])
def test_api_a_model_that_does_not_return_class_scores_is_refused(output, got, method, alexnet, images):
    class Wrapped(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor):
            y = self.net(x)
            return {"tuple": (y, y), "dict": {"logits": y}, "squeezed": y.squeeze(0),
                    "spatial": y[:, :, None, None].expand(-1, -1, 2, 2)}[output]

    call = {"gradcam": functools.partial(gradcam, layer="net.features.11"),
            "gradcam-autograd": functools.partial(gradcam, layer="net.features.11", shortcut=False),
            "guided-backprop": guided_backprop}[method]
    wrapped = Wrapped(alexnet)
    for classes in (3, None):
        with pytest.raises(ModelError, match=re.escape(f"the model's forward returned {got}, not class scores")):
            call(wrapped, images[:1], classes)
    assert_no_hooks(alexnet)
