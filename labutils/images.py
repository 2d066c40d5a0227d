"""Image file -> the tensor the models expect: a normalized (1, 3, 224, 224) batch.

AlexNet and VGG-16 were trained on ImageNet photos scaled to [0, 1] and then
normalized channel by channel with the ImageNet mean and standard deviation
(``IMAGENET_MEAN``, ``IMAGENET_STD``, read from torchvision's weights metadata).
``load_image`` turns any image file into that input:

1. open it with PIL and check it (a regular, readable file, an image, not
   truncated, not tiny, not absurdly large, not 32-bit integer or float pixels);
2. turn it upright (EXIF orientation, as phone photos need, applied once whatever
   the format and Pillow version) and into RGB: transparency (RGBA, LA, palette
   with a transparent colour) is composited on white, CMYK / grayscale / palette
   are converted, 16-bit grayscale is scaled to 8 bits (65535 -> 255);
3. keep that RGB picture as ``LabImage.original`` for the Grad-CAM overlays,
   reduced to at most ``ORIGINAL_MAX_SIDE`` (1024) pixels on its longest side
   (the short side keeps at least ``MIN_SIDE`` pixels: a thin strip stays a strip);
4. ``preprocess`` it: resize the WHOLE picture to 224 x 224 (bilinear, with
   antialiasing, by PIL; no crop, so an object at the border stays in the input;
   the aspect ratio is not kept), scale to [0, 1] and normalize.

So ``LabImage.tensor`` is always ``preprocess(LabImage.original)``.

Memory is bounded for every format. A JPEG is decoded directly at 1/2, 1/4 or 1/8
scale (``Image.draft``); any other format is decoded whole, so a picture whose
decoded pixels would take more than ``MAX_DECODED_BYTES`` (512 MiB, as PIL stores
them: 1 byte a pixel for 1-bit, gray and palette pictures, 2 for 16-bit gray, 4 for
RGB, RGBA, CMYK...) is refused with ``ImageError`` from its header, before any pixel
is decoded: a 20000 x 20000 palette or 1-bit PNG loads (400 MB), an RGB one (1.6 GB)
is refused, whatever its file size (a 1.5 MB PNG can hold it). After decoding, every
picture is shrunk to 1024 pixels before it becomes a float tensor, and palette and
1-bit pictures, which must be converted before they are shrunk, are converted a band
of rows at a time: ``load_image`` needs at most about ``MAX_DECODED_BYTES`` + 200 MB
(measured peaks: tests/test_image_limits.py). Images of more than ``MAX_PIXELS``
(20000 x 20000) pixels are refused too; below that, PIL's decompression-bomb limit
is lifted for the duration of the call. A JPEG whose header claims more pixels than
its data could code (less than one bit per 8 x 8 block) is refused rather than
decoded into grey filler. Any other failure of a decoder is one ``ImageError``.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.models import VGG16_Weights
from torchvision.transforms import functional as TF

from labutils.errors import ImageError, ImageNotFoundError

# AlexNet_Weights.IMAGENET1K_V1 uses the same numbers.
_IMAGENET_TRANSFORMS = VGG16_Weights.IMAGENET1K_V1.transforms()
IMAGENET_MEAN: tuple[float, float, float] = tuple(_IMAGENET_TRANSFORMS.mean)
IMAGENET_STD: tuple[float, float, float] = tuple(_IMAGENET_TRANSFORMS.std)

INPUT_SIZE = 224  # the side of the square input of AlexNet and VGG-16
MAX_SIDE = 2048  # the largest model input: VGG-16's first feature maps then take 1 GiB each
ORIGINAL_MAX_SIDE = 1024  # LabImage.original is reduced to this many pixels on its longest side
MIN_SIDE = 8  # smaller images carry no usable detail
MAX_PIXELS = 20000 * 20000  # larger images are refused (a decompression bomb or a mistake)
MAX_DECODED_BYTES = 512 * 2**20  # larger decoded pictures (after a JPEG's draft) are refused: bounded memory

_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # the EXIF tag saying how the camera was held
_BITS_PER_SAMPLE = 258  # the TIFF tag giving the bits of each pixel value
_BAND_PIXELS = 1 << 24  # pixels converted at a time in a large palette or 1-bit picture


@dataclass(frozen=True, eq=False)
class LabImage:
    """One image, ready for the models.

    ``tensor``: the model input, (1, 3, 224, 224) float32, normalized.
    ``original``: the RGB picture the tensor was made from, for overlays (longest
    side at most 1024 pixels: larger photos are kept reduced to that).
    ``path``: the file it came from (``None`` for an in-memory picture).
    ``name``: a short label for plots (the file name).
    """

    tensor: torch.Tensor
    original: Image.Image
    path: Path | None
    name: str

    def __repr__(self) -> str:
        width, height = self.original.size
        return f"LabImage(name={self.name!r}, original={width}x{height}, tensor={tuple(self.tensor.shape)})"


def load_image(path: str | os.PathLike, size: int = INPUT_SIZE) -> LabImage:
    """Open an image file and make the model input from it (see the module docstring)."""
    if not isinstance(path, (str, os.PathLike)):
        hint = ": for a picture in memory use from_pil(picture)" if isinstance(path, Image.Image) else ""
        raise ImageError(f"load_image expects the path of an image file (str or Path), got {type(path).__name__}{hint}")
    _check_size_argument(size)
    if not os.fspath(path):
        raise ImageError("the image path is empty: give the path of an image file")
    path = Path(path).expanduser()
    _check_file(path)
    with _pixel_limit(), _open(path) as img:
        _check_size(img, path)
        _check_bit_depth(img, path)
        _check_jpeg_data(img, path)
        try:
            img.draft(None, (ORIGINAL_MAX_SIDE, ORIGINAL_MAX_SIDE))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
            _check_decoded_size(img, path)
            img.load()  # decode everything now, so a truncated file fails here
            # read after loading: Pillow 13 turns TIFFs upright while loading (and drops the tag), older ones do not
            orientation = img.getexif().get(_ORIENTATION, 1)
        except DECODER_ERRORS as exc:
            raise _corrupt(path, exc) from exc
        try:
            original = _as_rgb_original(img, path)
            if original is img:  # the file's own image object dies when the file is closed
                original = img.copy()
            original = _upright(original, orientation)
        except DECODER_ERRORS as exc:  # a plugin's own failure on odd data: one ImageError, never a traceback
            raise ImageError(f"{path} could not be converted to RGB ({type(exc).__name__}: {exc}); "
                             "save it as an 8-bit PNG or JPEG") from exc
    return LabImage(tensor=preprocess(original, size), original=original, path=path, name=path.name)


def from_pil(image: Image.Image, name: str = "image", size: int = INPUT_SIZE) -> LabImage:
    """Make a ``LabImage`` from a picture already in memory (e.g. an upload in a notebook)."""
    if not isinstance(image, Image.Image):
        hint = " (wrap an array with PIL.Image.fromarray(array) first)" if isinstance(image, np.ndarray) else ""
        raise ImageError(f"from_pil expects a PIL image, got {type(image).__name__}{hint}; for a file use load_image")
    _check_size_argument(size)
    _check_size(image, name)
    original = _as_rgb_original(image, name)
    if original is image:
        original = image.copy()  # the caller may change their picture later
    return LabImage(tensor=preprocess(original, size), original=original, path=None, name=name)


def preprocess(image: Image.Image, size: int = INPUT_SIZE) -> torch.Tensor:
    """Resize the whole picture to size x size, scale to [0, 1], normalize: (1, 3, size, size).

    Same result as torchvision's ``Compose([Resize((size, size)), ToTensor(),
    Normalize(IMAGENET_MEAN, IMAGENET_STD)])`` on an RGB picture.
    """
    image = _to_rgb(image, getattr(image, "filename", "") or "the image")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
    x = TF.to_tensor(resized)  # (3, size, size), values in [0, 1]
    x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return x.unsqueeze(0)


def to_display(tensor: torch.Tensor) -> np.ndarray:
    """Undo the normalization of a (3, H, W) or (1, 3, H, W) input: H x W x 3 floats in [0, 1], for plotting."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ImageError(
            f"to_display expects one image, a (3, H, W) or (1, 3, H, W) tensor, got shape {tuple(tensor.shape)}; "
            "for a batch, pass one image at a time: batch[i]"
        )
    x = tensor.detach().cpu().float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def load_images(paths: Iterable[str | os.PathLike] | str | os.PathLike, size: int = INPUT_SIZE) -> list[LabImage]:
    """``load_image`` for each path (a single path is accepted too)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, Iterable):
        raise ImageError(f"load_images expects a path or a list of paths, got {type(paths).__name__}")
    return [load_image(p, size) for p in paths]


def stack(images: Sequence[LabImage]) -> torch.Tensor:
    """The model input for several images: their tensors as one (N, 3, H, W) batch."""
    if len(images) == 0:
        raise ImageError("stack() needs at least one image; load some with load_images([...])")
    shapes = {tuple(im.tensor.shape) for im in images}
    if len(shapes) != 1:
        sizes = ", ".join(f"{im.name}: {tuple(im.tensor.shape)}" for im in images)
        raise ImageError(f"stack() needs images of one size, got {sizes}; load them all with the same size")
    return torch.cat([im.tensor for im in images])


# --- the steps -------------------------------------------------------------------

DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, MemoryError)  # what Pillow's plugins raise on data they cannot decode


def _corrupt(path: Path, exc: BaseException) -> ImageError:
    if isinstance(exc, MemoryError):
        return ImageError(f"{path} needs more memory to decode than this machine has: shrink it first")
    return ImageError(f"{path} is truncated or corrupt ({exc}): the download or copy probably stopped early; "
                      "get the file again")


def _check_decoded_size(img: Image.Image, where: object) -> None:
    """Refuse a picture whose decoded pixels would exceed MAX_DECODED_BYTES (after a JPEG's draft)."""
    width, height = img.size
    per_pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
    need = width * height * per_pixel
    if need > MAX_DECODED_BYTES:
        raise ImageError(
            f"{where} is {width}x{height} pixels in mode {img.mode}: decoding it would take {need / 2**20:.0f} MiB, "
            f"more than the lab's {MAX_DECODED_BYTES // 2**20} MiB; shrink it first (any image editor), or save it "
            "as a JPEG, which is decoded at a reduced scale"
        )


def _check_jpeg_data(img: Image.Image, where: Path) -> None:
    """Refuse a JPEG whose header claims more 8x8 blocks than its data could code (one bit each at least)."""
    if img.format != "JPEG":
        return
    width, height = img.size
    blocks = -(-width // 8) * -(-height // 8)
    size = where.stat().st_size
    if size * 8 < blocks:
        raise ImageError(
            f"{where} claims {width}x{height} pixels but holds only {size} bytes, too few for any JPEG of that "
            "size (its header is wrong or the file is cut short): get the file again"
        )


def _check_size_argument(size: object) -> None:
    """Refuse an input size that is not a whole number of pixels of at least MIN_SIDE."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIDE <= size <= MAX_SIDE:
        raise ImageError(f"size must be a whole number of pixels from {MIN_SIDE} to {MAX_SIDE}, got {size!r}; "
                         f"the models were trained on {INPUT_SIZE}x{INPUT_SIZE} (the default)")


def _check_file(path: Path) -> None:
    """Raise a clear error for a path that is not a readable, non-empty regular file."""
    try:
        info = path.stat()
    except OSError as exc:
        raise _unusable_path(path, exc) from None
    except ValueError:  # an embedded NUL character
        raise ImageError(f"{str(path)!r} is not a valid file path (it holds a NUL character)") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path} is a folder, not an image file; give the path of an image inside it")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is not a regular file (a FIFO, socket or device): give the path of an image file")
    if info.st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes): the download or copy probably failed; get the file again")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path} cannot be read: permission denied; change its permissions (chmod +r) or copy it")


def _unusable_path(path: Path, exc: OSError) -> ImageError:
    """One clear ImageError for each way ``stat`` fails on an image path."""
    if exc.errno == errno.ELOOP:
        return ImageError(f"{path} is a loop of symbolic links (one points back to another); fix or remove the links")
    if exc.errno == errno.ENAMETOOLONG:
        longest = max(len(part.encode()) for part in path.parts)
        return ImageError(f"the path {str(path)[:60]}... is too long ({len(str(path))} characters, longest name "
                          f"{longest} bytes; names may have at most 255): rename or move the file")
    if exc.errno == errno.EACCES:
        return ImageError(f"{path} cannot be reached: permission denied on a folder of its path")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if path.is_symlink():
            return ImageNotFoundError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist")
        return ImageNotFoundError(
            f"Image file not found: {path} (relative paths start in {Path.cwd()}); check the name and folder"
        )
    return ImageError(f"Cannot read {path}: {exc.strerror or exc}")


@contextmanager
def _pixel_limit() -> Iterator[None]:
    """Let PIL open images up to MAX_PIXELS during this call (its default stops near 89 megapixels)."""
    default = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = default


def _open(path: Path) -> Image.Image:
    """``Image.open`` with one clear ImageError for each way it fails."""
    try:
        return Image.open(path)
    except UnidentifiedImageError as exc:
        with open(path, "rb") as f:
            text = f.read(256).isascii()
        hint = " (it holds text, e.g. an error page saved by a failed download)" if text else ""
        raise ImageError(
            f"{path} is not an image PIL can read{hint}; use a JPEG or PNG file, or get the file again"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from exc
    except PermissionError as exc:
        raise ImageError(
            f"{path} cannot be read: permission denied; change its permissions (chmod +r) or copy it"
        ) from exc
    except OSError as exc:
        raise ImageError(f"Cannot read {path}: {exc}") from exc
    except DECODER_ERRORS as exc:  # a header Pillow's plugin cannot parse
        raise ImageError(f"{path} has a corrupt header ({type(exc).__name__}: {exc}); get the file again") from exc


def _too_large(where: object, detail: object) -> ImageError:
    limit = int(MAX_PIXELS**0.5)
    return ImageError(
        f"{where} is too large ({detail}); the lab accepts images up to {limit}x{limit} pixels: "
        "shrink it first (any image editor, or PIL's Image.thumbnail)"
    )


def _check_size(img: Image.Image, where: object) -> None:
    """Refuse tiny and absurdly large images, before decoding any pixel."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise _too_large(where, f"{width}x{height} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{where} is only {width}x{height} pixels; images must be at least {MIN_SIDE}x{MIN_SIDE} "
            "(the models see 224x224): use a larger image"
        )


def _check_bit_depth(img: Image.Image, where: object) -> None:
    """Refuse 32-bit integer pixels (a TIFF can hold them): their brightness scale is unknown."""
    bits = getattr(img, "tag_v2", {}).get(_BITS_PER_SAMPLE, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    if img.mode.startswith("I") and max(bits) > 16:
        raise ImageError(
            f"{where} holds {max(bits)}-bit integer pixels, whose brightness scale is unknown; "
            "save it as an 8-bit (or 16-bit) PNG or JPEG"
        )


def _as_rgb_original(img: Image.Image, where: object) -> Image.Image:
    """The RGB picture kept as ``LabImage.original``: converted, at most ORIGINAL_MAX_SIDE pixels."""
    if img.mode.startswith("I"):
        low, high = img.getextrema()
        if low < 0 or high > 65535:
            raise ImageError(
                f"{where} holds integer pixels from {low} to {high}, beyond 16 bits (0..65535), so their "
                "brightness scale is unknown; save it as an 8-bit (or 16-bit) PNG or JPEG"
            )
    if img.mode in ("P", "PA", "1") or "transparency" in img.info:
        # palette indices and colour keys must not be blended: convert first, band by band
        return _shrink(_to_rgb_in_bands(img, where))
    return _shrink(_to_rgb(_shrink(img), where))  # fewer pixels to convert


def _to_rgb_in_bands(img: Image.Image, where: object) -> Image.Image:
    """``_to_rgb(img).reduce(f)`` for a large picture, converted a band of rows at a time.

    A 20000 x 20000 palette image would need 1.6 GB as one RGBA picture; a band needs 64 MB. The
    factor f keeps at least 2 * ORIGINAL_MAX_SIDE pixels on the longest side for ``_shrink``; bands
    are f rows high (a multiple), so the box averages are those of the whole picture.
    """
    width, height = img.size
    factor = max(1, max(width, height) // (2 * ORIGINAL_MAX_SIDE))
    if factor == 1:
        return _to_rgb(img, where)
    rows = factor * max(1, _BAND_PIXELS // (width * factor))
    out = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        band = _to_rgb(img.crop((0, top, width, min(height, top + rows))), where)
        out.paste(band.reduce(factor), (0, top // factor))
    return out


def _shrink(img: Image.Image) -> Image.Image:
    """The picture reduced to ORIGINAL_MAX_SIDE pixels on its longest side (unchanged if smaller).

    The short side keeps at least MIN_SIDE pixels (or all it has): a 20 x 20000 strip becomes
    8 x 1024, not a 1 x 1024 line whose colours are averaged together.
    """
    width, height = img.size
    scale = ORIGINAL_MAX_SIDE / max(width, height)
    if scale >= 1:
        return img
    new_size = tuple(max(round(side * scale), min(side, MIN_SIDE)) for side in (width, height))
    gap = None if img.mode.startswith("I;16") else 3.0  # Pillow's reduce() (reducing_gap's first step): no 16-bit
    return img.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=gap)


def _to_rgb(img: Image.Image, where: object) -> Image.Image:
    """The picture in RGB: transparency on white, 16-bit scaled to 8-bit, other modes converted."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I"):  # 16-bit grayscale ("I;16", or "I" holding 0..65535)
        levels = np.asarray(img).clip(0, 65535).astype(np.uint32)
        eight_bit = ((levels * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), in integers
        return Image.fromarray(eight_bit).convert("RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if img.mode == "F":
        raise ImageError(
            f"{where} holds 32-bit floating-point pixels, whose brightness scale is unknown; "
            "save it as an 8-bit (or 16-bit) PNG or JPEG"
        )
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(
            f"{where} has pixel mode {img.mode!r}, which cannot be converted to RGB; save it as JPEG or PNG"
        ) from exc


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation (1 = upright already), as ImageOps.exif_transpose does."""
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img if method is None else img.transpose(method)
