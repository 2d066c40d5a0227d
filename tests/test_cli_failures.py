"""Issue 22: ``explain`` keeps its promise whatever one image does: a file name that is not UTF-8 under a
strict terminal encoding, a 16-bit grayscale PNG of 6144x4608, a decompression bomb, a JPEG whose header
lies, an unexpected exception while explaining one image. The others are explained, each failure is one
line, never a traceback, exit status 1 (some explained) as documented."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from test_image_limits import zero_png

import labutils.cli as cli
from labutils.cli import main, printable

RANDOM = ("--model", "alexnet", "--weights", "random")


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8))


def liar_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    picture(3).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    path.write_bytes(bytes(data))
    return path


def test_printable_escapes_what_the_stream_cannot_print():
    class Ascii:
        encoding = "ascii"

    name = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name on a UTF-8 file system: a surrogate escape
    assert printable(name, Ascii()) == "caf\\xe9.jpg"
    assert printable("tiger cat: 0.9 — café", Ascii()) == "tiger cat: 0.9 \\u2014 caf\\xe9"
    assert printable("café", sys.stdout if sys.stdout.encoding.lower().startswith("utf") else Ascii()) in (
        "café", "caf\\xe9")


def test_a_folder_of_awkward_images_under_a_strict_ascii_terminal(tmp_path):
    """A real run in a fresh process, stdout and stderr strictly ASCII (the issue: UnicodeEncodeError, traceback,
    exit 1, no file written)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    picture(1).save(folder / "good.png")
    picture(2).save(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    levels = np.full((4608, 6144), 30000, dtype=np.uint16)
    Image.fromarray(levels).save(folder / "gray16.png", compress_level=1)
    zero_png(folder / "bomb.png", 20000, 20000, "RGBA")
    liar_jpeg(folder / "liar.jpg")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict", "LC_ALL": "C", "LABUTILS_WEIGHTS": ""}
    run = subprocess.run([sys.executable, "-m", "labutils", "explain", str(folder), *RANDOM, "--class", "243",
                          "--out", str(out)], capture_output=True, env=env, timeout=600, cwd=tmp_path)
    stdout, stderr = run.stdout.decode("ascii"), run.stderr.decode("ascii")  # strictly ASCII, or this fails
    assert "Traceback" not in stdout + stderr, stderr
    assert run.returncode == 1, (run.returncode, stderr)
    written = sorted(os.listdir(os.fsencode(out)))
    assert written == sorted([b"caf\xe9_alexnet_features.11_243_gradcam.png", b"good_alexnet_features.11_243_gradcam.png",
                              b"gray16_alexnet_features.11_243_gradcam.png"]), written
    assert "caf\\xe9.png: " in stdout
    errors = stderr.splitlines()
    assert len(errors) == 3 and errors[-1] == "error: 2 of 5 images could not be explained (listed above)", errors
    assert "bomb.png is 20000x20000 pixels in mode RGBA" in errors[0]
    assert "liar.jpg claims 20000x20000 pixels" in errors[1]


def test_an_unexpected_failure_while_explaining_one_image_stops_only_that_image(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        picture(i).save(folder / name)
    original = cli.explain_batch

    def fails_on_b(args, model, batch, classes):
        if any(image.name == "b.png" for image in batch):
            raise RuntimeError("something inside torch went wrong")
        return original(args, model, batch, classes)

    monkeypatch.setattr(cli, "explain_batch", fails_on_b)
    monkeypatch.delenv("LABUTILS_WEIGHTS", raising=False)
    status = main(["explain", str(folder), *RANDOM, "--class", "243", "--batch-size", "3", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.out + captured.err
    assert sorted(os.listdir(tmp_path / "o")) == ["a_alexnet_features.11_243_gradcam.png",
                                                   "c_alexnet_features.11_243_gradcam.png"]
    assert captured.err.splitlines() == [
        f"error: {folder / 'b.png'}: RuntimeError: something inside torch went wrong",
        "error: 1 of 3 images could not be explained (listed above)"]
