"""labutils.images: image file -> normalized (1, 3, 224, 224) tensor, and every way a file can be wrong."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile
from torchvision import transforms

from labutils.errors import ImageError, ImageNotFoundError, LabError
from labutils.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LabImage,
    from_pil,
    load_image,
    load_images,
    preprocess,
    stack,
    to_display,
)

# The ImageNet statistics, typed here independently of the code under test.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HALF_LEVEL = 0.5 / 255 / min(STD)  # half an 8-bit level, in normalized units


def normalized(rgb: tuple[int, int, int]) -> torch.Tensor:
    """The model input value of an 8-bit RGB colour, computed from MEAN and STD."""
    return torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, MEAN, STD)])


def pixel(lab: LabImage, row: int, col: int) -> torch.Tensor:
    return lab.tensor[0, :, row, col]


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes = b"") -> bytes:
    """A PNG file written by hand (PIL cannot write 48-bit RGB, nor lie about its size)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def test_mean_and_std_are_the_imagenet_statistics():
    assert IMAGENET_MEAN == pytest.approx(MEAN)
    assert IMAGENET_STD == pytest.approx(STD)


# --- errors ------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageNotFoundError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, LabError)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a folder, not an image file") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        load_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "page.jpg"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(ImageError, match="is not an image PIL can read.*holds text") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    whole = save(Image.fromarray(noise), tmp_path / "whole.jpg", quality=95).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="is truncated or corrupt.*get the file again") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # the global switch is left alone


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(tmp_path, size):
    path = save(Image.new("RGB", size, (1, 2, 3)), tmp_path / "tiny.png")
    with pytest.raises(ImageError, match=rf"only {size[0]}x{size[1]} pixels.*at least 8x8"):
        load_image(path)


def test_smallest_allowed_size_loads(tmp_path):
    path = save(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "small.png")
    lab = load_image(path)
    assert torch.allclose(pixel(lab, 100, 100), normalized((10, 20, 30)), atol=HALF_LEVEL)


@pytest.mark.parametrize("width, height", [(25000, 20000), (40000, 40000)])
def test_absurd_size_is_refused_before_decoding(tmp_path, width, height):
    # Only the header claims this size: the file is tiny, the refusal comes before decoding.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(width, height, 8, 2))
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="is too large.*up to 20000x20000 pixels"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's policy is restored after the call


def test_large_but_sane_size_is_allowed(tmp_path):
    # A real 14000x13000 grayscale JPEG (182 megapixels): PIL's default policy refuses it as a
    # decompression bomb; load_image accepts it (decoded at 1/8 scale, so the test stays small).
    path = save(Image.new("L", (14000, 13000), 90), tmp_path / "large.jpg")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    lab = load_image(path)
    assert lab.tensor.shape == (1, 3, 224, 224) and lab.original.size == (1024, 951)
    assert lab.original.getpixel((500, 500)) == (90, 90, 90)
    # the same header over a 16x16 picture's data (issue 22: it was explained as grey filler) is refused
    small = save(Image.new("RGB", (16, 16), (9, 9, 9)), tmp_path / "small.jpg").read_bytes()
    sof = small.index(b"\xff\xc0") + 5  # SOF0 marker, 2 length bytes, 1 precision byte, then height, width
    liar = tmp_path / "claims_huge.jpg"
    liar.write_bytes(small[:sof] + struct.pack(">HH", 9000, 10000) + small[sof + 4 :])
    with pytest.raises(ImageError, match="claims 10000x9000 pixels but holds only"):
        load_image(liar)


def test_float_image_is_refused(tmp_path):
    path = save(Image.new("F", (16, 16), 0.5), tmp_path / "float.tiff")
    with pytest.raises(ImageError, match="floating-point"):
        load_image(path)


# --- colours: every mode comes out as the right RGB ----------------------------------


def test_solid_rgb_gives_the_normalized_colour(tmp_path):
    lab = load_image(save(Image.new("RGB", (320, 240), (200, 100, 50)), tmp_path / "solid.png"))
    assert lab.tensor.shape == (1, 3, 224, 224) and lab.tensor.dtype == torch.float32
    expected = normalized((200, 100, 50)).view(1, 3, 1, 1).expand(1, 3, 224, 224)
    assert torch.allclose(lab.tensor, expected, atol=1e-6)
    assert lab.original.mode == "RGB" and lab.original.size == (320, 240)
    assert lab.name == "solid.png" and lab.path == tmp_path / "solid.png"


def test_cmyk(tmp_path):
    c, m, y, k = 20, 40, 60, 10
    # the usual CMYK -> RGB formula: R = 255 (1 - C/255)(1 - K/255)
    expected = tuple(round(255 * (1 - v / 255) * (1 - k / 255)) for v in (c, m, y))
    tiff = load_image(save(Image.new("CMYK", (64, 48), (c, m, y, k)), tmp_path / "cmyk.tiff"))
    assert torch.allclose(pixel(tiff, 112, 112), normalized(expected), atol=HALF_LEVEL)
    red = load_image(save(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100))
    assert torch.allclose(pixel(red, 112, 112), normalized((255, 0, 0)), atol=3 / 255 / min(STD))


def test_grayscale(tmp_path):
    lab = load_image(save(Image.new("L", (50, 40), 77), tmp_path / "gray.png"))
    assert torch.allclose(pixel(lab, 10, 200), normalized((77, 77, 77)), atol=HALF_LEVEL)


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (60, 60), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    lab = load_image(save(img, tmp_path / "palette.png"))
    assert torch.allclose(pixel(lab, 50, 50), normalized((10, 200, 30)), atol=HALF_LEVEL)


def test_palette_with_transparency_goes_on_white(tmp_path):
    img = Image.new("P", (80, 40), 0)  # left half: index 0, transparent
    img.paste(1, (40, 0, 80, 40))  # right half: index 1, opaque green
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    lab = load_image(save(img, tmp_path / "transparent.png", transparency=0))
    assert torch.allclose(pixel(lab, 112, 40), normalized((255, 255, 255)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 112, 180), normalized((10, 200, 30)), atol=HALF_LEVEL)


def test_rgba_is_composited_on_white(tmp_path):
    alpha = 128
    lab = load_image(save(Image.new("RGBA", (64, 64), (255, 0, 0, alpha)), tmp_path / "rgba.png"))
    a = alpha / 255
    expected = tuple(round(v * a + 255 * (1 - a)) for v in (255, 0, 0))  # (255, 127, 127)
    assert torch.allclose(pixel(lab, 100, 100), normalized(expected), atol=1.5 / 255 / min(STD))
    opaque_black_on_clear = Image.new("LA", (64, 64), (0, 0))
    opaque_black_on_clear.paste((0, 255), (32, 0, 64, 64))
    lab = load_image(save(opaque_black_on_clear, tmp_path / "la.png"))
    assert torch.allclose(pixel(lab, 100, 50), normalized((255, 255, 255)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 100, 170), normalized((0, 0, 0)), atol=HALF_LEVEL)


def test_16_bit_grayscale_png_is_scaled_to_8_bit(tmp_path):
    levels = np.zeros((40, 120), dtype=np.uint16)
    levels[:, 40:80] = 32896  # 128 * 257
    levels[:, 80:] = 1000  # 3.89 eight-bit levels
    path = save(Image.fromarray(levels), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    lab = load_image(path)
    for col, value in ((30, 0), (112, 128), (200, 4)):
        assert torch.allclose(pixel(lab, 112, col), normalized((value,) * 3), atol=HALF_LEVEL), col


def test_16_bit_rgb_png(tmp_path):
    width, height = 32, 32
    row = b"\x00" + struct.pack(">HHH", 0xFFFF, 0x8080, 0x1000) * width  # filter byte, then pixels
    path = tmp_path / "deep_rgb.png"
    path.write_bytes(png_bytes(width, height, 16, 2, row * height))
    lab = load_image(path)
    expected = (255, 128, round(0x1000 / 257))
    assert torch.allclose(pixel(lab, 112, 112), normalized(expected), atol=1.5 / 255 / min(STD))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 100))  # red stripe along the left edge of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    lab = load_image(save(img, tmp_path / "phone.jpg", exif=exif, quality=95))
    assert lab.original.size == (100, 200)
    red, blue = normalized((255, 0, 0)), normalized((0, 0, 255))
    tol = 6 / 255 / min(STD)
    assert torch.allclose(pixel(lab, 0, 112), red, atol=tol)  # the left edge is now the top
    assert torch.allclose(pixel(lab, 223, 112), blue, atol=tol)


# --- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(300, 200), (200, 300)])
def test_whole_image_is_kept_no_crop(tmp_path, size):
    width, height = size
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, height))  # left edge
    img.paste((0, 255, 0), (width - 10, 0, width, height))  # right edge
    img.paste((255, 255, 0), (20, 0, width - 20, 10))  # top edge
    img.paste((0, 0, 0), (20, height - 10, width - 20, height))  # bottom edge
    lab = load_image(save(img, tmp_path / "edges.png"))
    # A center crop (Resize(256) + CenterCrop(224)) would cut the edges of the long side away.
    assert torch.allclose(pixel(lab, 112, 0), normalized((255, 0, 0)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 112, 223), normalized((0, 255, 0)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 0, 112), normalized((255, 255, 0)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 223, 112), normalized((0, 0, 0)), atol=HALF_LEVEL)


def torchvision_reference(size: int = 224) -> transforms.Compose:
    return transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )


@pytest.mark.parametrize("size", [(300, 200), (97, 411), (224, 224), (100, 100)])
def test_preprocess_matches_torchvision(size):
    rng = np.random.default_rng(size[0])
    noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    ours = preprocess(img)
    assert ours.shape == (1, 3, 224, 224)
    assert torch.allclose(ours[0], torchvision_reference()(img), atol=1e-6, rtol=0)
    assert torch.allclose(preprocess(img, 64)[0], torchvision_reference(64)(img), atol=1e-6, rtol=0)


def test_load_image_tensor_is_preprocess_of_original(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (150, 250, 3), dtype=np.uint8)
    path = save(Image.fromarray(noise), tmp_path / "noise.png")
    lab = load_image(path)
    assert np.array_equal(np.asarray(lab.original), noise)
    assert torch.allclose(lab.tensor[0], torchvision_reference()(Image.open(path).convert("RGB")), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    """A 10000 x 8000 JPEG: blue, with a red stripe along its left edge."""
    img = Image.new("RGB", (10000, 8000), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 300, 8000))
    return save(img, tmp_path_factory.mktemp("huge") / "huge.jpg", quality=90)


def test_huge_jpeg_never_becomes_a_full_resolution_tensor(huge_jpeg, monkeypatch):
    to_tensor_inputs, decoded = [], []
    real_to_tensor, real_load = TF.to_tensor, ImageFile.ImageFile.load

    def spy_to_tensor(pic):
        to_tensor_inputs.append(pic.size)
        return real_to_tensor(pic)

    def spy_load(self):
        result = real_load(self)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(TF, "to_tensor", spy_to_tensor)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    lab = load_image(huge_jpeg)
    assert lab.tensor.shape == (1, 3, 224, 224)
    assert to_tensor_inputs == [(224, 224)]  # the only float tensor is the 224 x 224 input
    assert decoded and max(w * h for w, h in decoded) <= 2500 * 2000  # decoded at 1/4 scale (draft)
    assert lab.original.size == (1024, 819)  # kept reduced to 1024 on the longest side
    tol = 6 / 255 / min(STD)
    assert torch.allclose(pixel(lab, 112, 0), normalized((255, 0, 0)), atol=tol)
    assert torch.allclose(pixel(lab, 112, 200), normalized((0, 0, 255)), atol=tol)


def test_large_png_is_reduced_to_1024(tmp_path):
    img = Image.new("RGB", (3000, 2000), (0, 128, 0))
    img.paste((255, 0, 0), (0, 0, 100, 2000))
    lab = load_image(save(img, tmp_path / "large.png", compress_level=1))
    assert lab.original.size == (1024, 683)
    assert torch.allclose(pixel(lab, 100, 0), normalized((255, 0, 0)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 100, 150), normalized((0, 128, 0)), atol=HALF_LEVEL)


# --- helpers for notebooks -------------------------------------------------------------------


def test_to_display_undoes_the_normalization():
    noise = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    shown = to_display(preprocess(Image.fromarray(noise)))
    assert shown.shape == (224, 224, 3)
    assert np.allclose(shown, noise / 255, atol=1e-6)
    assert np.allclose(to_display(preprocess(Image.fromarray(noise))[0]), noise / 255, atol=1e-6)
    saturated = to_display(torch.full((3, 4, 4), 100.0))
    assert saturated.min() == 1.0 and saturated.max() == 1.0  # clipped to [0, 1] for imshow
    with pytest.raises(ImageError, match="one image"):
        to_display(torch.zeros(2, 3, 8, 8))


def test_load_images_and_stack(tmp_path):
    a = save(Image.new("RGB", (30, 30), (255, 0, 0)), tmp_path / "a.png")
    b = save(Image.new("RGB", (40, 20), (0, 0, 255)), tmp_path / "b.png")
    labs = load_images([a, str(b)])
    assert [lab.name for lab in labs] == ["a.png", "b.png"]
    batch = stack(labs)
    assert batch.shape == (2, 3, 224, 224)
    assert torch.equal(batch[1], labs[1].tensor[0])
    assert torch.allclose(batch[0, :, 5, 5], normalized((255, 0, 0)), atol=HALF_LEVEL)
    assert [lab.name for lab in load_images(a)] == ["a.png"]  # one path alone is fine too
    with pytest.raises(ImageError, match="at least one image"):
        stack([])
    with pytest.raises(ImageError, match="one size"):
        stack([labs[0], load_image(a, size=64)])


def test_lab_image_is_frozen_and_prints_short(tmp_path):
    lab = load_image(save(Image.new("RGB", (30, 20), (1, 2, 3)), tmp_path / "x.png"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab.name = "other"  # type: ignore[misc]
    assert repr(lab) == "LabImage(name='x.png', original=30x20, tensor=(1, 3, 224, 224))"


def test_from_pil_converts_in_memory_pictures():
    lab = from_pil(Image.new("RGBA", (50, 50), (0, 0, 0, 0)), name="upload")
    assert lab.path is None and lab.name == "upload" and lab.original.mode == "RGB"
    assert torch.allclose(pixel(lab, 7, 7), normalized((255, 255, 255)), atol=HALF_LEVEL)
    with pytest.raises(ImageError, match="upload is only 2x2 pixels"):
        from_pil(Image.new("RGB", (2, 2)), name="upload")



# --- issue 13: orientation of every format, large palette pictures, thin strips ----------------

ORIENTED = {  # EXIF orientation -> what a viewer does to the stored pixels (numpy, on H x W x 3)
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def corner_picture() -> np.ndarray:
    """40 x 60 pixels, four flat quadrants of different colours: any flip or rotation shows."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:20, :30], a[:20, 30:], a[20:, :30], a[20:, 30:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
    return a


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "WEBP", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_every_format_is_applied_once(tmp_path, fmt, orientation):
    """Pillow 13 already turns a TIFF upright while loading it; the others are turned by load_image."""
    a = corner_picture()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"pic.{fmt.lower()}"
    options = {"tiffinfo": {0x0112: orientation}} if fmt == "TIFF" else {"exif": exif.tobytes()}
    exact = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.fromarray(a).save(path, format=fmt, **exact, **options)
    expected = ORIENTED.get(orientation, lambda a: a)(a).astype(int)
    got = np.asarray(load_image(path).original).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 40, f"orientation {orientation} of a {fmt} not applied exactly once"


def test_truncated_png_is_an_image_error_naming_the_file(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    whole = save(Image.fromarray(noise), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="cut.png is truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("mode", ["P", "1", "PA"])
def test_large_palette_and_1_bit_pictures_are_converted_band_by_band(mode, monkeypatch):
    """The band-by-band conversion equals converting the whole picture and box-reducing it, and never
    converts more than one band at a time (a 20000 x 20000 palette PNG: 1.2 GB peak instead of 5.8 GB)."""
    from labutils import images

    rng = np.random.default_rng(2)
    width, height = 4200, 301
    if mode == "1":
        img = Image.fromarray(rng.integers(0, 2, (height, width), dtype=np.uint8) * 255).convert("1")
    else:
        img = Image.fromarray(rng.integers(0, 64, (height, width), dtype=np.uint8), "P")
        img.putpalette(rng.integers(0, 256, 64 * 3, dtype=np.uint8).tobytes())
        if mode == "PA":
            img = img.convert("PA")
    factor = max(width, height) // (2 * images.ORIGINAL_MAX_SIDE)
    assert factor == 2
    expected = np.asarray(images._to_rgb(img, "x").reduce(factor))
    monkeypatch.setattr(images, "_BAND_PIXELS", 1 << 16)  # many bands, the last one partial
    converted = []
    real_to_rgb = images._to_rgb
    monkeypatch.setattr(images, "_to_rgb", lambda im, where: converted.append(im.size) or real_to_rgb(im, where))
    got = np.asarray(images._to_rgb_in_bands(img, "x"))
    assert np.array_equal(got, expected)
    assert len(converted) > 10 and max(w * h for w, h in converted) <= (1 << 16) + width * factor


def test_thin_strip_keeps_its_colours(tmp_path):
    """20 x 20000, left half red, right half blue: the kept picture is 8 x 1024, the input red | blue."""
    strip = np.zeros((20000, 20, 3), np.uint8)
    strip[:, :10], strip[:, 10:] = (255, 0, 0), (0, 0, 255)
    lab = load_image(save(Image.fromarray(strip), tmp_path / "strip.png"))
    assert lab.original.size == (8, 1024)
    assert lab.tensor.shape == (1, 3, 224, 224)
    assert torch.allclose(pixel(lab, 100, 0), normalized((255, 0, 0)), atol=HALF_LEVEL)
    assert torch.allclose(pixel(lab, 100, 223), normalized((0, 0, 255)), atol=HALF_LEVEL)
