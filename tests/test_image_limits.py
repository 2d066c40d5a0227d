"""Issue 22: every image ends as an image or one ImageError, with bounded memory.

The decompression bombs are written by hand in a few milliseconds: a PNG whose rows are all zero
bytes is one small deflate block repeated (each block is flushed with Z_FULL_FLUSH, so it stands
alone and copies concatenate), and the Adler-32 of n zero bytes is known (a = 1, b = n mod 65521).
A 20000 x 20000 RGBA PNG is then 1.5 MB on disk and 1.6 GB decoded. Nothing large is committed.
Peak memory is measured in a fresh process (VmHWM of /proc/self/status, reset just before the call).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import labutils
from labutils.errors import ImageError
from labutils.images import MAX_DECODED_BYTES, load_image

# PNG colour types and bits: (colour type, bit depth, bytes of one row of `width` pixels)
KINDS = {
    "RGBA": (6, 8, lambda w: 4 * w),
    "RGB": (2, 8, lambda w: 3 * w),
    "palette": (3, 8, lambda w: w),
    "1-bit": (0, 1, lambda w: -(-w // 8)),
}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(path: Path, width: int, height: int, kind: str) -> Path:
    """A valid PNG of ``width`` x ``height`` pixels whose every byte of pixel data is zero, written in milliseconds."""
    colour, bits, row_bytes = KINDS[kind]
    total = height * (row_bytes(width) + 1)  # a filter byte (0: none) before each row
    block = 1 << 22

    def flushed(n: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)

    whole, rest = divmod(total, block)
    stream = flushed(block) * whole + (flushed(rest) if rest else b"")
    stream += zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # the final (empty) block
    adler = ((total % 65521) << 16) | 1
    data = b"\x78\x9c" + stream + struct.pack(">I", adler)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0))
    if kind == "palette":
        png += chunk(b"PLTE", bytes([200, 30, 60]) + bytes(3 * 255))
    png += chunk(b"IDAT", data) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def test_the_hand_made_png_is_what_it_claims(tmp_path):
    """The generator itself, on a size small enough to decode in full."""
    for kind in KINDS:
        with Image.open(zero_png(tmp_path / f"{kind}.png", 300, 40, kind)) as img:
            img.load()
            assert img.size == (300, 40)
            assert np.asarray(img).max() == 0, kind


PEAK = """
import gc, json, sys
from pathlib import Path
import labutils.images as images
def kb(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
for path in sys.argv[1:]:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = kb("VmRSS")
    try:
        image = images.load_image(path)
        outcome = [list(image.original.size), list(image.original.getpixel((0, 0)))]
        del image
    except images.ImageError as exc:
        outcome = ["ImageError", str(exc)]
    print(json.dumps({"extra_mb": (kb("VmHWM") - before) / 1024, "outcome": outcome}))
"""

BOUND_MB = MAX_DECODED_BYTES / 2**20 + 200  # the documented bound: MAX_DECODED_BYTES + about 200 MB


def test_decompression_bombs_load_or_are_refused_within_the_memory_bound(tmp_path):
    """The issue's worst cases, 20000 x 20000 PNGs of 1.5 MB or less: the rise was 3.1 GiB (RGBA) to 0.5 GiB
    (1-bit). One fresh process loads the four files in turn, the peak reset before each."""
    paths = [zero_png(tmp_path / f"bomb-{kind}.png", 20000, 20000, kind) for kind in KINDS]
    assert all(p.stat().st_size < 2 * 2**20 for p in paths)
    run = subprocess.run([sys.executable, "-c", PEAK, *map(str, paths)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.strip().splitlines()[-len(paths):]]
    for kind, path, found in zip(KINDS, paths, results):
        print(f"{kind}: {path.stat().st_size / 2**20:.2f} MB file, peak rise {found['extra_mb']:.0f} MB, "
              f"{found['outcome'][0]}")
        assert found["extra_mb"] < BOUND_MB, f"{kind}: {found['extra_mb']:.0f} MB over the documented bound"
        if kind in ("RGBA", "RGB"):  # 4 bytes a pixel as PIL stores them: 1.6 GB, refused from the header
            assert found["outcome"][0] == "ImageError" and "MiB" in found["outcome"][1], kind
            assert found["extra_mb"] < 50, f"{kind}: refused before any pixel was decoded"
        else:  # 1 byte a pixel: 400 MB, decoded and shrunk
            assert found["outcome"] == [[1024, 1024], [200, 30, 60] if kind == "palette" else [0, 0, 0]], kind


def test_a_large_16_bit_grayscale_png_loads(tmp_path):
    """Issue 22, item 3: 6144x4608 and larger raised a bare ValueError (Pillow's reduce() has no 16-bit mode)."""
    levels = np.full((4608, 6144), 40000, dtype=np.uint16)
    levels[:, 3072:] = 10000
    path = tmp_path / "gray16.png"
    Image.fromarray(levels).save(path, compress_level=1)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    image = load_image(path)
    assert image.original.size == (1024, 768)
    # 40000 / 257 = 155.6 -> 156 on the left half, 10000 / 257 = 38.9 -> 39 on the right
    assert image.original.getpixel((10, 10)) == (156, 156, 156)
    assert image.original.getpixel((1000, 700)) == (39, 39, 39)


def test_a_jpeg_whose_header_lies_about_its_size_is_refused(tmp_path):
    """Issue 22, item 6: 640x480 data under a header claiming 20000x20000 was explained as grey filler."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), (90, 120, 200)).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # the frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    path = tmp_path / "liar.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="claims 20000x20000 pixels but holds only"):
        load_image(path)
    honest = tmp_path / "honest.jpg"
    Image.new("RGB", (2000, 1600), (90, 120, 200)).save(honest, "JPEG", quality=90)  # a flat picture: small file
    assert honest.stat().st_size * 8 >= (2000 // 8) * (1600 // 8)
    assert load_image(honest).original.size == (1024, 819)


def test_odd_decoder_failures_are_one_image_error(tmp_path, monkeypatch):
    """A plugin raising something else than OSError while decoding (e.g. struct.error) is one ImageError."""
    path = tmp_path / "fine.png"
    Image.new("RGB", (64, 64)).save(path)

    def broken(self, *args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)
    assert issubclass(ImageError, labutils.LabError)
