"""``python -m labutils explain``: every bad input is one line on stderr, a non-zero exit status and no
traceback, and leaves nothing in the output folder; good input writes the PNGs and .npz files the README
promises, the same from any current directory.

Most cases call ``labutils.cli.main([...])`` in this process (fast); three run the real command in a
subprocess, from another directory, to show the same for real (and to measure the memory of a
10000 x 8000 photo). Every run uses ``--weights random`` with LABUTILS_WEIGHTS unset: nothing is downloaded.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from httpserver import closed_port_url  # tests/ is on sys.path (pytest rootdir-less import)
from PIL import Image

from labutils import gradcam
from labutils.cli import main
from labutils.images import load_image

REPO = Path(__file__).resolve().parents[1]
RANDOM = ["--model", "alexnet", "--weights", "random"]


class Evil:
    """A pickle that creates ``marker`` when unpickled: what a malicious .pth file can do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def noise(seed: int, shape: tuple[int, ...], high: int = 256, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


# ---------------------------------------------------------------- inputs, made once


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Good and bad images, and good and bad weight files, in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    Image.fromarray(noise(0, (200, 300, 3))).save(root / "ok.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "page.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    Image.fromarray(noise(1, (256, 256, 3))).save(root / "whole.jpg", quality=95)
    whole = (root / "whole.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("RGB", (1, 1), (9, 9, 9)).save(root / "tiny.png")
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("not an image\n")
    (root / "mixed").mkdir()  # two good images and a broken one: nothing may be written at all
    Image.fromarray(noise(2, (60, 80, 3))).save(root / "mixed" / "a.png")
    (root / "mixed" / "b.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(noise(3, (60, 80, 3))).save(root / "mixed" / "c.png")
    (root / "twins").mkdir()  # cat.jpg and cat.png would write the same result files
    Image.fromarray(noise(9, (40, 40, 3))).save(root / "twins" / "cat.jpg")
    Image.fromarray(noise(9, (40, 40, 3))).save(root / "twins" / "cat.png")

    modes = root / "modes"  # the image modes that must be converted to RGB and work
    modes.mkdir()
    Image.fromarray(noise(4, (48, 64), 65536, np.uint16)).save(modes / "deep.png")
    Image.fromarray(noise(5, (48, 64, 4)), "CMYK").save(modes / "cmyk.jpg", quality=95)
    Image.fromarray(noise(6, (48, 64, 3))).quantize(16).save(modes / "palette.png")
    Image.fromarray(noise(7, (48, 64))).save(modes / "gray.png")
    Image.fromarray(noise(8, (48, 64, 4)), "RGBA").save(modes / "rgba.png")

    squeezenet = torchvision.models.squeezenet1_1(weights=None).state_dict()  # another architecture, 5 MB
    torch.save(squeezenet, root / "squeezenet.pth")
    good = (root / "squeezenet.pth").read_bytes()
    (root / "cut.pth").write_bytes(good[: len(good) // 2])
    (root / "alexnet-owt-00000000.pth").write_bytes(good)  # its name claims a SHA-256 it does not have
    torch.save({"features.0.weight": Evil(root / "marker")}, root / "evil.pth")
    return root


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """LABUTILS_WEIGHTS unset, an empty weight cache, and no server to download from."""
    monkeypatch.delenv("LABUTILS_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LABUTILS_MIRROR", closed_port_url())


@pytest.fixture
def out(tmp_path) -> Path:
    """An output folder that already holds the result of an earlier run, which must survive untouched."""
    folder = tmp_path / "out"
    folder.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "earlier.png")
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m labutils ARGV`` in this process: exit status, stdout, stderr."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, stdout: str, stderr: str, *words: str) -> str:
    """Non-zero status, exactly one line on stderr naming the problem, no traceback anywhere."""
    assert status != 0
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr: {stderr!r}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def assert_untouched(out: Path) -> None:
    """Only the earlier result is there, unchanged: no partial PNG, no temporary ``.*`` file."""
    assert sorted(os.listdir(out)) == ["earlier.png"]
    with Image.open(out / "earlier.png") as earlier:
        assert earlier.getpixel((0, 0)) == (1, 2, 3)


# ---------------------------------------------------------------- bad images


@pytest.mark.parametrize(
    "image, words",
    [
        ("missing.jpg", ["not found", "missing.jpg"]),
        ("no_images", ["no_images", "folder with no image files"]),
        ("empty.jpg", ["empty.jpg", "is empty (0 bytes)"]),
        ("page.jpg", ["page.jpg", "not an image", "holds text"]),
        ("cut.jpg", ["cut.jpg", "truncated or corrupt"]),
        ("tiny.png", ["tiny.png", "only 1x1 pixels", "at least 8x8"]),
    ],
)
def test_bad_image_is_one_line_and_writes_nothing(image, words, files, out, capsys):
    status, stdout, stderr = run(capsys, "explain", files / image, *RANDOM, "--out", out, "--npz")
    assert_one_line_error(status, stdout, stderr, *words)
    assert stdout == ""  # refused before the model was even built
    assert_untouched(out)


def test_a_broken_image_in_a_folder_does_not_stop_the_others(files, tmp_path, capsys):
    """The folder's two good images are explained; the broken one is listed at the end; exit status 1."""
    out = tmp_path / "mixed_out"
    status, stdout, stderr = run(capsys, "explain", files / "mixed", *RANDOM, "--class", "243", "--out", out)
    assert status == 1
    assert "Traceback" not in stdout + stderr
    assert sorted(os.listdir(out)) == ["a_alexnet_features.11_243_gradcam.png", "c_alexnet_features.11_243_gradcam.png"]
    assert [line.split(": ")[0] for line in stdout.splitlines() if ": " in line][1:] == [
        str(files / "mixed" / "a.png"), str(files / "mixed" / "c.png")]
    assert stdout.splitlines()[-1].startswith("wrote Grad-CAM results for 2 image(s)")
    assert stderr.splitlines() == [
        stderr.splitlines()[0], "error: 1 of 3 images could not be explained (listed above)"]
    assert stderr.startswith(f"error: {files / 'mixed' / 'b.jpg'} is truncated or corrupt")


def test_a_folder_is_streamed_one_batch_of_images_at_a_time(tmp_path, capsys, monkeypatch):
    """7 images, batches of 2: never more than 2 loaded images alive at once (1000 photos cost what 10 do:
    measured, 200 photos of 2000x1500 peak at 1.18 GB against 1.12 GB for 10), all 7 explained in order."""
    import weakref

    from labutils import cli

    folder = tmp_path / "seven"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(noise(20 + i, (40, 50, 3))).save(folder / f"p{i}.png")
    alive: list[weakref.ref] = []
    most = [0]
    real_load = cli.load_image

    def tracked(path):
        image = real_load(path)
        alive.append(weakref.ref(image))
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        return image

    monkeypatch.setattr(cli, "load_image", tracked)
    status, stdout, stderr = run(capsys, "explain", folder, *RANDOM, "--class", "1", "--batch-size", "2",
                                 "--out", tmp_path / "o")
    assert (status, stderr) == (0, "")
    assert [line.split(": ")[0] for line in stdout.splitlines() if ": " in line][1:] == [
        str(folder / f"p{i}.png") for i in range(7)]
    assert len(alive) == 7 and most[0] == 2


def test_a_folder_shows_a_progress_bar_on_a_terminal(files, tmp_path, monkeypatch):
    """tqdm's bar on stderr when it is a terminal (in a log file it would only add noise)."""
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([str(a) for a in ("explain", files / "modes", *RANDOM, "--class", "1", "--batch-size", "2",
                                  "--out", tmp_path / "o")]) == 0
    assert "explaining: 100%" in terminal.getvalue() and "5/5" in terminal.getvalue()


def test_image_modes_that_need_converting_all_work(files, alexnet, tmp_path, capsys):
    """16-bit, CMYK, palette, grayscale, RGBA: one folder, two classes, PNGs and .npz for each image."""
    out = tmp_path / "modes_out"
    status, stdout, stderr = run(
        capsys, "explain", files / "modes", *RANDOM, "--class", "243", "--class", "tiger cat", "--out", out, "--npz"
    )
    assert (status, stderr) == (0, "")
    names = ["cmyk", "deep", "gray", "palette", "rgba"]
    expected = {f"{n}_alexnet_features.11_{c}_gradcam.png" for n in names for c in (243, 282)}
    expected |= {f"{n}_alexnet_gradcam.npz" for n in names}
    assert set(os.listdir(out)) == expected  # one labelled PNG per image and class; no temporary file
    assert "WARNING: UNTRAINED (random) weights" in stdout
    for n in names:
        source = files / "modes" / f"{n}.{'jpg' if n == 'cmyk' else 'png'}"
        (line,) = [line for line in stdout.splitlines() if line.startswith(f"{source}: ")]
        assert len(line.split("; ")) == 5  # the top-5 predictions
        with Image.open(out / f"{n}_alexnet_features.11_243_gradcam.png") as png:
            assert png.mode == "RGB" and png.width == 64 and png.height > 48  # the picture, then a caption
        saved = np.load(out / f"{n}_alexnet_gradcam.npz")
        assert saved["classes"].tolist() == [243, 282]
        assert saved["raw"].shape == (2, 13, 13) and saved["map"].shape == (2, 224, 224)
        assert saved["map"].min() >= 0 and saved["map"].max() <= 1
        # the CLI's maps of each image of the batch are those of the API on that image alone (the
        # tolerance allows for a GPU, where the CLI runs, with TF32 convolutions; another image's maps differ
        # by their whole size)
        alone = gradcam(alexnet, load_image(source).tensor, [243, 282]).raw[0]
        scale = alone.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(torch.from_numpy(saved["raw"]), alone, rtol=0, atol=2e-2 * scale)
    assert saved["map"].max() == 1  # normalized maps peak at 1 (not all of them zero)


def test_guided_backprop_writes_input_gradients_in_closed_files(files, tmp_path, capsys):
    out = tmp_path / "guided_out"
    with warnings.catch_warnings(record=True) as caught:  # an unclosed .npz file would warn when collected
        warnings.simplefilter("always", ResourceWarning)
        status, stdout, stderr = run(
            capsys, "explain", files / "ok.png", *RANDOM, "--method", "guided-backprop", "--class", "1",
            "--class", "2", "--out", out, "--npz",
        )
    assert (status, stderr) == (0, "")
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert sorted(os.listdir(out)) == [
        "ok_alexnet_guided-backprop.npz", "ok_alexnet_input_1_guided-backprop.png",
        "ok_alexnet_input_2_guided-backprop.png",
    ]
    saved = np.load(out / "ok_alexnet_guided-backprop.npz")
    assert saved["classes"].tolist() == [1, 2]
    assert saved["raw"].shape == saved["map"].shape == (2, 3, 224, 224)
    assert np.abs(saved["raw"]).max() > 0
    with Image.open(out / "ok_alexnet_input_1_guided-backprop.png") as png:
        assert png.size[0] == 300


# ---------------------------------------------------------------- bad classes and layers


@pytest.mark.parametrize(
    "option, words",
    [
        (["--class", "1000"], ["class index 1000 is out of range", "0..999"]),
        (["--class", "-1"], ["class index -1 is out of range", "0..999"]),
        (["--class", "tiger kat"], ["no ImageNet class is named 'tiger kat'", "did you mean 'tiger cat'"]),
        (["--layer", "features.99"], ["no layer 'features.99'", "features.0, features.1", "features.11"]),
        (["--layer", "classifier.1"], ["'classifier.1' (Linear)", "not a 4-D feature map", "features.11"]),
    ],
)
def test_bad_class_or_layer_is_one_line_and_writes_nothing(option, words, files, out, capsys):
    status, stdout, stderr = run(capsys, "explain", files / "ok.png", *RANDOM, *option, "--out", out, "--npz")
    message = assert_one_line_error(status, stdout, stderr, *words)
    if option[0] == "--layer":
        assert "classifier" not in message.split(";")[-1]  # only conv/ReLU layers are offered
    assert_untouched(out)
    new = out.parent / "new" / "folder"  # an --out still to be made is not made by a run that writes nothing
    status, stdout, stderr = run(capsys, "explain", files / "ok.png", *RANDOM, *option, "--out", new)
    assert_one_line_error(status, stdout, stderr, *words)
    assert not (out.parent / "new").exists()


# ---------------------------------------------------------------- bad weights


@pytest.mark.parametrize(
    "weights, words",
    [
        ("missing.pth", ["missing.pth", "no such file", "'random'"]),
        ("cut.pth", ["cut.pth", "not a readable PyTorch weight file"]),
        ("squeezenet.pth", ["do not fit the alexnet architecture", "missing: features.3.weight"]),
        ("alexnet-owt-00000000.pth", ["alexnet-owt-00000000.pth", "does not match the checksum in its name"]),
        ("evil.pth", ["evil.pth", "not a plain state_dict", "not loaded"]),
        # offline, nothing cached: the pretrained file cannot be downloaded
        ("imagenet", ["No pretrained alexnet weights", "download failed", "connection refused", "fetch --from"]),
    ],
)
def test_bad_weights_are_one_line_and_write_nothing(weights, words, files, out, capsys):
    value = weights if weights == "imagenet" else files / weights
    argv = ["explain", files / "ok.png", "--model", "alexnet", "--weights", value, "--out", out]
    status, stdout, stderr = run(capsys, *argv)
    assert_one_line_error(status, stdout, stderr, *words)
    assert not (files / "marker").exists()  # the malicious pickle did not run
    assert_untouched(out)
    cache = Path(os.environ["TORCH_HOME"])
    assert not cache.exists() or [p for p in cache.rglob("*") if p.is_file()] == []  # no partial weight file


def test_the_malicious_pickle_is_real(files, tmp_path):
    """Control for the test above: loaded the unsafe way, the file does create its marker."""
    torch.save({"w": Evil(tmp_path / "control")}, tmp_path / "control.pth")
    loaded = torch.load(tmp_path / "control.pth", weights_only=False)
    loaded["w"].close()  # the file object the payload opened
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["explain", "x.jpg", "--model", "resnet50"], ["invalid choice: 'resnet50'", "--help"]),
        (["explain", "x.jpg", "--model", "alexnet", "--method", "lime"], ["invalid choice: 'lime'"]),
        (["explain", "--model", "alexnet"], ["required: IMAGE"]),
        (["explain", "ok.png", "--model", "alexnet", "--batch-size", "0"], ["--batch-size must be at least 1"]),
        (["explain", "ok.png", "--model", "alexnet", "--batch-size", "two"], ["invalid int value: 'two'"]),
    ],
)
def test_usage_errors_are_one_line(argv, words, files, out, capsys, monkeypatch):
    monkeypatch.chdir(files)
    status, stdout, stderr = run(capsys, *argv, "--out", out)
    assert_one_line_error(status, stdout, stderr, *words)
    assert_untouched(out)


def test_output_conflicts_are_refused_before_any_work(files, out, tmp_path, capsys):
    status, stdout, stderr = run(capsys, "explain", files / "twins", *RANDOM, "--out", out)
    assert_one_line_error(status, stdout, stderr, "cat.jpg and", "cat.png", "same files")
    assert_untouched(out)
    a_file = tmp_path / "result.png"
    a_file.write_bytes(b"an earlier result")
    status, stdout, stderr = run(capsys, "explain", files / "ok.png", *RANDOM, "--out", a_file)
    assert_one_line_error(status, stdout, stderr, "--out", "result.png is a file")
    assert stdout == "" and a_file.read_bytes() == b"an earlier result"


# ---------------------------------------------------------------- failures while writing


def test_disk_full_while_writing_leaves_no_half_png_nor_temp_file(files, out, capsys, monkeypatch):
    """The second PNG fails half written (ENOSPC): the first is complete, the second absent, no temp file."""
    real_save = Image.Image.save
    calls = []

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(Path(fp))
        if len(calls) < 2:
            return real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    argv = ["explain", files / "ok.png", *RANDOM, "--class", "1", "--class", "2", "--out", out]
    status, stdout, stderr = run(capsys, *argv)
    message = assert_one_line_error(status, stdout, stderr, os.strerror(errno.ENOSPC),
                                    f"cannot write {out / 'ok_alexnet_features.11_2_gradcam.png'}: ",
                                    "the results written before it are complete")
    assert not message.endswith("()")  # no empty file name in parentheses
    assert all(c.parent == out and c.name.startswith(".") for c in calls)  # written through temporary files
    assert sorted(os.listdir(out)) == ["earlier.png", "ok_alexnet_features.11_1_gradcam.png"]
    with Image.open(out / "ok_alexnet_features.11_1_gradcam.png") as png:
        png.verify()  # the finished one is whole


# ---------------------------------------------------------------- the current directory does not matter


def test_results_do_not_depend_on_the_current_directory(files, tmp_path, capsys, monkeypatch):
    """Relative paths from the inputs' folder, absolute paths from elsewhere: identical files.

    On the CPU: a GPU's backward pass (atomic additions in max-pooling) is not bit-reproducible."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(files)
    argv = ["explain", "modes/rgba.png", "ok.png", *RANDOM, "--class", "243", "--npz"]
    assert run(capsys, *argv, "--out", os.path.relpath(tmp_path / "a"))[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute = ["explain", files / "modes" / "rgba.png", files / "ok.png", *RANDOM, "--class", "243", "--npz"]
    assert run(capsys, *absolute, "--out", tmp_path / "b")[0] == 0
    assert os.listdir(elsewhere) == []  # nothing written into the current directory
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b")) and len(names) == 4
    for name in names:
        a, b = tmp_path / "a" / name, tmp_path / "b" / name
        if name.endswith(".png"):
            assert a.read_bytes() == b.read_bytes(), name  # no time stamp, no path inside the PNGs
        else:
            first, second = np.load(a), np.load(b)
            assert all(np.array_equal(first[k], second[k]) for k in ("classes", "raw", "map")), name


# ---------------------------------------------------------------- the real command, in subprocesses


def start(argv: list, cwd: Path, log: Path) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m labutils ARGV`` in ``cwd``, stdout and stderr going to files."""
    env = {k: v for k, v in os.environ.items() if k != "LABUTILS_WEIGHTS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log.mkdir()
    with open(log / "stdout", "w") as stdout, open(log / "stderr", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "labutils", *map(str, argv)], cwd=cwd, env=env, stdout=stdout, stderr=stderr
        )
    return process, log


def peak_rss_mb(pid: int) -> float | None:
    """The peak resident memory so far of process ``pid`` (VmHWM: reset by exec, unlike ru_maxrss)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None  # in kB


def finish(started: dict[str, tuple[subprocess.Popen, Path]], timeout: float = 240) -> dict[str, dict]:
    """Wait for the processes, sampling their peak memory (MB, from Linux /proc) while they run."""
    deadline = time.monotonic() + timeout
    peaks: dict[str, float | None] = {name: None for name in started}
    while any(process.poll() is None for process, _ in started.values()):
        if time.monotonic() > deadline:
            pytest.fail(f"python -m labutils did not finish in {timeout} s")
        for name, (process, _) in started.items():
            peaks[name] = max(filter(None, [peaks[name], peak_rss_mb(process.pid)]), default=None)
        time.sleep(0.02)
    return {
        name: {
            "status": process.returncode,
            "stdout": (log / "stdout").read_text(),
            "stderr": (log / "stderr").read_text(),
            "peak_mb": peaks[name],
        }
        for name, (process, log) in started.items()
    }


@pytest.fixture(scope="module")
def real_runs(files, tmp_path_factory) -> dict[str, dict]:
    """Three real runs, started together from a folder that is not the repository."""
    root = tmp_path_factory.mktemp("real")
    cwd = root / "cwd"
    cwd.mkdir()
    huge = Image.new("RGB", (10000, 8000), (0, 0, 255))
    huge.paste((255, 0, 0), (0, 0, 300, 8000))
    huge.save(root / "huge.jpg", quality=90)
    del huge
    runs = {
        "evil": ["explain", files / "ok.png", "--model", "alexnet", "--weights", files / "evil.pth",
                 "--out", root / "out_evil"],
        "folder": ["explain", files / "modes", *RANDOM, "--out", root / "out_folder", "--npz"],
        "huge": ["explain", root / "huge.jpg", *RANDOM, "--class", "243", "--out", root / "out_huge"],
    }
    started = {name: start(argv, cwd, root / f"log_{name}") for name, argv in runs.items()}
    try:
        results = finish(started)
    finally:
        for process, _ in started.values():
            if process.poll() is None:  # only after a failure: leave no process running
                process.kill()
                process.wait()
    for result in results.values():
        result["root"] = root
    print({name: f"status {r['status']}, peak {r['peak_mb'] or 0:.0f} MB" for name, r in results.items()})
    assert os.listdir(cwd) == []  # nothing written into the current directory
    return results


def test_real_command_refuses_a_malicious_weight_file_in_one_line_without_traceback(real_runs, files):
    r = real_runs["evil"]
    assert_one_line_error(r["status"], r["stdout"], r["stderr"], "evil.pth", "not a plain state_dict")
    assert r["status"] == 2
    assert not (files / "marker").exists()  # its code did not run
    assert not (r["root"] / "out_evil").exists()


def test_real_command_explains_a_folder_and_prints_the_top5(real_runs, files):
    r = real_runs["folder"]
    assert (r["status"], r["stderr"]) == (0, "")
    sources = sorted(str(p) for p in (files / "modes").iterdir())
    assert [line.split(": ")[0] for line in r["stdout"].splitlines() if ": " in line][1:] == sources
    for line in r["stdout"].splitlines()[1:-1]:
        assert len(line.split("; ")) == 5, line  # the top-5 of each image
    assert r["stdout"].splitlines()[-1].startswith("wrote Grad-CAM results for 5 image(s)")
    written = sorted(os.listdir(r["root"] / "out_folder"))
    assert len(written) == 10 and sum(n.endswith(".npz") for n in written) == 5


def test_real_command_takes_a_10000x8000_photo_without_a_full_resolution_copy(real_runs):
    r = real_runs["huge"]
    assert (r["status"], r["stderr"]) == (0, "")
    with Image.open(r["root"] / "out_huge" / "huge_alexnet_features.11_243_gradcam.png") as png:
        assert png.width == 1024 and png.height > 819  # the original reduced to 1024 pixels, then the caption
    # A full-resolution float tensor would cost 915 MB (8-bit RGB: 229 MB); the run on five small images is
    # the baseline (same command, same model).
    if not sys.platform.startswith("linux"):
        return  # the peak memory is sampled from /proc
    assert r["peak_mb"] and real_runs["folder"]["peak_mb"], "the peak memory was not sampled"
    extra = r["peak_mb"] - real_runs["folder"]["peak_mb"]
    print(f"10000x8000 JPEG: peak {r['peak_mb']:.0f} MB, {extra:+.0f} MB over the run on five small images")
    assert extra < 400


def test_a_usage_error_names_the_help_to_read(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.rstrip().endswith("(see: python -m labutils --help)")
    assert main(["summary"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("(see: python -m labutils summary --help)")
