"""Preprocessing: fervgg.preprocess and scripts/data_processing.py, its command line
(image decoding itself: test_imaging.py).

Everything runs on tiny synthetic images written into tmp_path. Most runs are
in-process (data_processing.main) for speed; a few go through a subprocess to check
exit codes and one-line errors.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fervgg import artifacts
from fervgg import common
from fervgg import config
from fervgg import folders
from fervgg import imaging
from fervgg import preprocess
from fervgg.common import FervggError
from conftest import script, assert_dark_side, exif_with, save, top_dark

data_processing = script("data_processing")

# As outside pytest: preprocessing makes PIL's bomb warning an error (imaging.set_max_pixels),
# but pytest resets warning filters around each test.
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")

SIZE = 16  # source images are SIZE x SIZE and processed at --image-size SIZE: no resampling
STRIPE = 4  # the left STRIPE columns of an image hold its class value


# ---------------------------------------------------------------- helpers

def class_value(label: int) -> int:
    return 20 + 30 * label


def pattern(label: int, index: int, size: int = SIZE) -> np.ndarray:
    """A distinct image per (label, index): random pixels, left stripe = class value."""
    rng = np.random.default_rng(10_000 * label + index)
    img = rng.integers(0, 256, (size, size), dtype=np.uint8)
    img[:, :STRIPE] = class_value(label)
    return img


def write_class(folder: Path, label: int, n: int, start: int = 0) -> list[Path]:
    """n distinct PNGs of class `label` in `folder` (which is created even when n == 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [save(folder / f"img_{start + i:03d}.png", pattern(label, start + i)) for i in range(n)]


def make_dataset(root: Path, train: dict[str, int], test: dict[str, int] | None = None) -> Path:
    """root/train/<class>/ (+ root/test/<class>/); labels follow the sorted train class names."""
    names = sorted(train)
    for name, n in train.items():
        write_class(root / "train" / name, names.index(name), n)
    for name, n in (test or {}).items():
        write_class(root / "test" / name, names.index(name), n, start=500)
    return root


def run(data: Path, out: Path, *extra: str) -> dict:
    """data_processing.main in-process; returns meta.json."""
    argv = ["--data-dir", str(data), "--out-dir", str(out)]
    if "--workers" not in extra:
        argv += ["--workers", "1"]
    if "--image-size" not in extra:
        argv += ["--image-size", str(SIZE)]
    assert data_processing.main(argv + list(extra)) == 0
    return json.loads((out / config.META_FILE).read_text())


def run_subprocess(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "data_processing.py"), *args],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )


def load(out: Path, split: str) -> artifacts.Split:
    return artifacts.load_split(out, split)


def rows(x: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in x}


def bad_reasons(meta: dict) -> dict[str, str]:
    return {Path(b["path"]).name: b["reason"] for b in meta["bad_files"]}


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header declares width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def noise_bytes(path: Path, fmt: str) -> bytes:
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path, format=fmt)
    return path.read_bytes()


def tmp_leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if ".tmp" in n]


# ---------------------------------------------------------------- output contract

def test_output_contract_and_labels(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 8, "b": 8, "c": 8}, {"a": 3, "b": 3, "c": 3})
    out = tmp_path / "out"
    meta = run(data, out, "--image-size", str(SIZE), "--val-fraction", "0.25")

    assert meta["class_names"] == ["a", "b", "c"]
    assert meta["image_size"] == SIZE
    assert meta["settings"]["test_source"] == "test/ folder"
    assert meta["totals"] == {"train": 18, "val": 6, "test": 9}
    assert meta["counts"]["val"] == {"a": 2, "b": 2, "c": 2}
    assert meta["bad_files"] == []
    for split in config.SPLITS:
        x_name, y_name = artifacts.array_names(split)
        x, y = np.load(out / x_name), np.load(out / y_name)
        assert x.dtype == np.uint8 and x.shape == (meta["totals"][split], SIZE, SIZE, 1)
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert y.min() >= 0 and y.max() < 3
        assert meta["arrays"][x_name] == {"dtype": "uint8", "shape": list(x.shape)}
        for name in (x_name, y_name):
            assert meta["sha256"][name] == common.sha256_file(out / name)
        # Each image still carries its class stripe: pixels and labels stayed together.
        for img, label in zip(x[..., 0], y):
            assert (img[:, :STRIPE] == class_value(label)).all()
        loaded = load(out, split)
        assert np.array_equal(loaded.x, x) and np.array_equal(loaded.y, y)
    # The test split is exactly the test/ folder's images.
    expected_test = {pattern(k, 500 + i).tobytes() for k in range(3) for i in range(3)}
    assert rows(np.load(out / "X_test.npy")[..., 0]) == expected_test
    assert not tmp_leftovers(out)


def test_image_size_flag_resizes(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    meta = run(data, out, "--image-size", "24")
    assert meta["image_size"] == 24
    for split in config.SPLITS:
        assert load(out, split).x.shape[1:] == (24, 24, 1)
    x = load(out, "train").x
    # Bilinear upscaling keeps the flat class stripe flat (away from its edge).
    labels = load(out, "train").y
    for img, label in zip(x[..., 0], labels):
        assert np.abs(img[:, :4].astype(int) - class_value(label)).max() <= 1


def test_help_exits_zero(repo_root, capsys):
    with pytest.raises(SystemExit) as exc:
        data_processing.parse_args(["--help"])
    assert exc.value.code == 0
    assert "--data-dir" in capsys.readouterr().out
    proc = run_subprocess(repo_root, "--help")
    assert proc.returncode == 0 and "--drop-leaks" in proc.stdout and proc.stderr == ""


# ---------------------------------------------------------------- bad files

def test_bad_files_are_skipped_and_listed(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"a": 5, "b": 5}, {"a": 2, "b": 2})
    cls = data / "train" / "a"
    (cls / "broken_link.png").symlink_to(tmp_path / "does_not_exist.png")
    (cls / "loop.png").symlink_to(cls / "loop.png")
    jpg = noise_bytes(tmp_path / "full.jpg", "JPEG")
    (cls / "truncated.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    png = noise_bytes(tmp_path / "full.png", "PNG")
    (cls / "truncated.png").write_bytes(png[: len(png) * 2 // 3])
    (cls / "empty.png").write_bytes(b"")
    (cls / "notes.jpg").write_text("this is not an image\n")
    png_declaring(cls / "bomb.png", 8_000, 8_000)  # 64 Mpx: over MAX_IMAGE_PIXELS
    png_declaring(data / "test" / "b" / "huge_bomb.png", 20_000, 20_000)  # 400 Mpx: PIL's own hard limit
    # A folder named like an image is just a (here empty) subfolder, not a file.
    (cls / "folder.jpg").mkdir()
    # Hidden files are skipped silently: neither images nor bad files.
    for hidden in (cls / ".DS_Store", cls / "._img_000.png", data / "train" / ".DS_Store"):
        hidden.write_bytes(b"\0\x05\x16\x07 AppleDouble junk")
    save(cls / ".hidden_dir" / "img.png", pattern(0, 99))

    out = tmp_path / "out"
    meta = run(data, out, "--val-fraction", "0.2")

    reasons = bad_reasons(meta)
    assert set(reasons) == {"broken_link.png", "loop.png", "truncated.jpg", "truncated.png",
                            "empty.png", "notes.jpg", "bomb.png", "huge_bomb.png"}
    assert reasons["broken_link.png"].startswith("a broken symbolic link (to ")
    assert reasons["loop.png"].startswith("cannot read file")
    assert "truncated" in reasons["truncated.jpg"]
    assert "truncated" in reasons["truncated.png"]
    assert "empty file" in reasons["empty.png"]
    assert "not an image" in reasons["notes.jpg"]
    assert "too large" in reasons["bomb.png"]
    assert "too large" in reasons["huge_bomb.png"]
    # Only the good images are counted; hidden files left no trace.
    assert meta["totals"]["train"] + meta["totals"]["val"] == 10
    assert meta["totals"]["test"] == 4
    assert not any(".DS_Store" in b["path"] or "._" in b["path"] or ".hidden" in b["path"]
                   for b in meta["bad_files"])
    all_train = np.concatenate([load(out, "train").x, load(out, "val").x])[..., 0]
    assert pattern(0, 99).tobytes() not in rows(all_train)
    assert "bad files skipped: 8" in capsys.readouterr().out


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    """A file that exists but cannot be opened (chmod 000 for a normal user; root reads anything,
    so the permission error is simulated)."""
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    locked = save(data / "train" / "a" / "locked.png", pattern(0, 77))
    real_open = open

    def fake_open(path, *args, **kwargs):
        if Path(path).name == locked.name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(imaging, "open", fake_open, raising=False)
    with pytest.raises(imaging.BadImage, match=r"^cannot read file \(Permission denied\)$"):
        imaging.load_gray(locked, SIZE)
    meta = run(data, tmp_path / "out", "--val-fraction", "0")
    assert bad_reasons(meta) == {"locked.png": "cannot read file (Permission denied)"}
    assert meta["totals"]["train"] == 6


def test_file_loose_in_train_is_listed(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    save(data / "train" / "stray.png", pattern(0, 50))
    meta = run(data, tmp_path / "out")
    assert bad_reasons(meta) == {"stray.png": "not inside a class folder"}
    assert sum(meta["totals"].values()) == 6


def test_pixel_cap_is_enforced_before_decoding(tmp_path, monkeypatch):
    small = save(tmp_path / "small.png", pattern(0, 0))
    with pytest.raises(imaging.BadImage, match="too large"):
        imaging.open_image(small, max_pixels=SIZE * SIZE - 1)
    assert imaging.open_image(small, max_pixels=SIZE * SIZE).size == (SIZE, SIZE)
    # Declared just over the cap: refused from the header alone (the file is a few hundred bytes).
    side = int(config.MAX_IMAGE_PIXELS ** 0.5) + 1
    bomb = png_declaring(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 10_000
    with pytest.raises(imaging.BadImage, match="too large"):
        imaging.load_gray(bomb, SIZE)
    with warnings.catch_warnings():  # without PIL's warning, the explicit check still refuses it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(imaging.BadImage, match=r"too large \(\d+x\d+ = "):
            imaging.load_gray(bomb, SIZE)
    # The file-size cap is read at call time.
    monkeypatch.setattr(config, "MAX_FILE_BYTES", 100)
    with pytest.raises(imaging.BadImage, match="file too large"):
        imaging.load_gray(small, SIZE)


def test_bomb_refused_in_subprocess(tmp_path, repo_root):
    """Outside pytest's warning capture: PIL's DecompressionBombWarning is an error too."""
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    png_declaring(data / "train" / "a" / "bomb.png", 8_000, 8_000)
    out = tmp_path / "out"
    proc = run_subprocess(repo_root, "--data-dir", str(data), "--out-dir", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    meta = json.loads((out / config.META_FILE).read_text())
    assert "too large" in bad_reasons(meta)["bomb.png"]


# ---------------------------------------------------------------- modes and formats


def test_mixed_modes_and_formats_end_to_end(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 2, "b": 2})
    cls = data / "train" / "b"
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    img = Image.fromarray(base)
    img.convert("RGB").save(cls / "rgb.jpg")
    img.convert("RGBA").save(cls / "rgba.png")
    img.convert("P").save(cls / "p.gif")
    Image.fromarray(base.astype(np.uint16) * 257).save(cls / "i16.png")
    img.convert("CMYK").save(cls / "cmyk.tif")
    img.convert("LA").save(cls / "la.png")
    img.convert("1").save(cls / "one.bmp")
    img.save(cls / "l.webp", lossless=True)
    img.save(cls / "UPPER.PNG")
    out = tmp_path / "out"
    meta = run(data, out, "--val-fraction", "0", "--test-fraction", "0")
    assert meta["bad_files"] == []
    assert meta["counts"]["train"] == {"a": 2, "b": 11}
    train = load(out, "train")
    # With no val/test taken, train keeps the files' sorted order.
    names = sorted(p.name for p in cls.iterdir())
    decoded = dict(zip(names, train.x[train.y == 1][..., 0].astype(int)))
    for name in ("i16.png", "rgba.png", "p.gif", "la.png", "l.webp", "UPPER.PNG"):
        assert np.array_equal(decoded[name], base), name  # 16-bit v * 257 -> v exactly
    assert np.abs(decoded["cmyk.tif"] - base).max() <= 1
    assert np.abs(decoded["rgb.jpg"] - base).mean() < 12  # lossy, on pure noise
    assert set(np.unique(decoded["one.bmp"])) <= {0, 255}


# ---------------------------------------------------------------- EXIF orientation


def test_exif_orientation_end_to_end(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 0, "b": 2})
    for i in range(3):
        base = top_dark()
        base.putpixel((4 * i, 15), 240)  # keep the images distinct
        base.save(data / "train" / "a" / f"rot{i}.jpg", quality=95, exif=exif_with(6))
    out = tmp_path / "out"
    run(data, out, "--val-fraction", "0", "--test-fraction", "0")
    train = load(out, "train")
    rotated = train.x[train.y == 0][..., 0]
    assert len(rotated) == 3
    for g in rotated:
        assert_dark_side(g, "right")


# ---------------------------------------------------------------- splits

def test_without_test_folder_a_stratified_test_split_is_taken(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 10, "b": 20})
    out = tmp_path / "out"
    meta = run(data, out, "--val-fraction", "0.2", "--test-fraction", "0.1")
    assert meta["settings"]["test_source"] == "stratified split of train/"
    assert meta["settings"]["test_fraction"] == 0.1
    assert meta["counts"] == {
        "train": {"a": 7, "b": 14},
        "val": {"a": 2, "b": 4},
        "test": {"a": 1, "b": 2},
    }
    assert sum(meta["totals"].values()) == 30
    xs = {s: rows(load(out, s).x[..., 0]) for s in config.SPLITS}
    assert len(xs["train"] | xs["val"] | xs["test"]) == 30  # disjoint, nothing lost
    expected = {pattern(k, i).tobytes() for k, n in ((0, 10), (1, 20)) for i in range(n)}
    assert xs["train"] | xs["val"] | xs["test"] == expected


def test_rerun_over_existing_output_is_identical(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 10, "b": 10})
    out = tmp_path / "out"
    first = run(data, out, "--seed", "5")
    arrays = {n: np.load(out / n) for n in first["sha256"]}
    second = run(data, out, "--seed", "5")
    assert second["sha256"] == first["sha256"]
    for name, a in arrays.items():
        assert np.array_equal(np.load(out / name), a)
    assert not tmp_leftovers(out)
    other = run(data, tmp_path / "other", "--seed", "6")
    assert other["sha256"]["X_val.npy"] != first["sha256"]["X_val.npy"]


def test_process_pool_matches_single_process(tmp_path, monkeypatch):
    n = folders.PARALLEL_MIN_FILES // 2 + 5
    data = make_dataset(tmp_path / "data", {"a": n, "b": n})
    (data / "train" / "b" / "bad.png").write_bytes(b"garbage")  # failures from a worker, too
    (data / "train" / "b" / "zz_empty.png").write_bytes(b"")
    single = run(data, tmp_path / "single")

    contexts = []
    real_get_context = folders.multiprocessing.get_context
    monkeypatch.setattr(folders.multiprocessing, "get_context",
                        lambda method=None: contexts.append(method) or real_get_context(method))
    pooled = run(data, tmp_path / "pooled", "--workers", "2")
    assert contexts, "the process pool was not used"
    assert pooled["sha256"] == single["sha256"]
    assert pooled["bad_files"] == single["bad_files"]
    assert sorted(bad_reasons(pooled)) == ["bad.png", "zz_empty.png"]
    assert sum(pooled["totals"].values()) == 2 * n


# ---------------------------------------------------------------- classes

def test_empty_class_folder_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 4, "b": 4, "c": 0, "d": 0})
    (data / "train" / "d" / ".DS_Store").write_bytes(b"x")  # hidden files are not images
    with pytest.raises(FervggError, match=r"class folder\(s\) without images in .*train: c, d; the model would"):
        run(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hidden_files_are_counted_in_the_summary(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"a": 4, "b": 4})
    (data / "train" / "a" / ".DS_Store").write_bytes(b"x")
    (data / "train" / "b" / "._img_000.png").write_bytes(b"x")
    (data / "train" / ".hidden_dir").mkdir()
    (data / "train" / "a" / "Thumbs.db").write_bytes(b"x")
    meta = run(data, tmp_path / "out")
    assert sorted(Path(p).name for p in meta["hidden_files_skipped"]) == [
        ".DS_Store", "._img_000.png", ".hidden_dir", "Thumbs.db"]
    assert "hidden files skipped: 4" in capsys.readouterr().out
    assert sum(meta["totals"].values()) == 8


def test_unknown_extra_class_is_used_with_warning(tmp_path, capsys):
    classes = {name: 2 for name in config.CLASS_NAMES}
    classes["contempt"] = 2
    data = make_dataset(tmp_path / "data", classes, {"happy": 1, "sad": 1})
    write_class(data / "test" / "unknown", 0, 1, start=900)
    meta = run(data, tmp_path / "out")
    err = capsys.readouterr().err
    assert "warning:" in err and "contempt" in err
    assert "test/unknown/ is not a class of train/" in err
    assert "contempt" in meta["class_names"] and len(meta["class_names"]) == 8
    assert meta["counts"]["train"]["contempt"] + meta["counts"]["val"]["contempt"] == 2
    assert meta["totals"]["test"] == 2  # test/unknown/ was ignored
    assert any("contempt" in w for w in meta["warnings"])


def test_a_validation_fraction_that_rounds_to_nothing_is_warned_with_a_fraction_that_works(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", {"happy": 5, "sad": 4}, {"happy": 1, "sad": 1})
    meta = run(data, tmp_path / "out", "--val-fraction", "0.05")
    assert meta["totals"]["val"] == 0
    [warning] = [w for w in meta["warnings"] if "no validation images" in w]
    assert warning in capsys.readouterr().err
    suggested = re.search(r"--val-fraction ([0-9.]+)", warning).group(1)
    meta = run(data, tmp_path / "out2", "--val-fraction", suggested)
    assert meta["totals"]["val"] > 0 and not any("no validation images" in w for w in meta["warnings"])


@pytest.mark.parametrize("train, match", [
    ({"a": 3}, "at least 2"),
    ({}, "at least 2"),
])
def test_fewer_than_two_classes_is_an_error(tmp_path, train, match):
    data = make_dataset(tmp_path / "data", train)
    (data / "train").mkdir(parents=True, exist_ok=True)
    with pytest.raises(FervggError, match=match):
        run(data, tmp_path / "out")


def test_nothing_readable_is_an_error(tmp_path):
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / "train" / name).mkdir(parents=True)
        (data / "train" / name / "x.jpg").write_text("not an image")
    with pytest.raises(FervggError, match="no readable images"):
        run(data, tmp_path / "out")
    for name in ("a", "b"):  # only hidden files: no image files at all
        (data / "train" / name / "x.jpg").unlink()
        (data / "train" / name / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(FervggError, match="without images in .*: a, b"):
        run(data, tmp_path / "out")
    assert not (tmp_path / "out" / config.META_FILE).exists()


def test_usable_images_in_one_class_only_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 0})
    (data / "train" / "b" / "x.png").write_bytes(b"")
    with pytest.raises(FervggError, match="no usable training images in class folder.s. b of"):
        run(data, tmp_path / "out")


# ---------------------------------------------------------------- interruption and checksums

def snapshot(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.is_file()}


def test_interrupted_rerun_keeps_the_previous_output(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", {"a": 5, "b": 5})
    out = tmp_path / "out"
    run(data, out)  # a complete earlier run
    before = snapshot(out)

    calls = []

    def interrupting_save(path, array):
        calls.append(path)
        if len(calls) == 1:
            return common.atomic_save_npy(path, array)

        def half_write(f):  # Ctrl+C in the middle of writing the second array
            f.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt
        return common.atomic_write_bytes(path, half_write)

    monkeypatch.setattr(artifacts, "atomic_save_npy", interrupting_save)
    with pytest.raises(KeyboardInterrupt):
        run(data, out, "--seed", "7")
    assert len(calls) == 2
    assert snapshot(out) == before and sorted(os.listdir(out)) == sorted(before)  # no staging left
    assert artifacts.load_split(out, "train").x.shape[0] > 0


def test_interrupted_first_run_writes_nothing(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    out = tmp_path / "out"

    done = []

    def interrupt_after_first(path, array):
        if done:
            raise KeyboardInterrupt
        done.append(path)
        common.atomic_save_npy(path, array)

    monkeypatch.setattr(artifacts, "atomic_save_npy", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(data, out)
    assert os.listdir(out) == []
    with pytest.raises(FervggError):
        artifacts.read_meta(out)
    with pytest.raises(FervggError):
        artifacts.load_split(out, "train")


def test_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "data", {"a": 5, "b": 5})
    out = tmp_path / "out"
    run(data, out)
    before = snapshot(out)
    calls = []

    def disk_fills(path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return common.atomic_save_npy(path, array)

    monkeypatch.setattr(artifacts, "atomic_save_npy", disk_fills)
    with pytest.raises(FervggError, match=r"cannot write the arrays to .*No space left on device; the previous"):
        run(data, out, "--seed", "7")
    assert snapshot(out) == before and sorted(os.listdir(out)) == sorted(before)
    assert artifacts.load_split(out, "train").x.shape[0] > 0


def test_not_enough_free_space_is_refused_before_decoding(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", {"a": 5, "b": 5})
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda path: SimpleNamespace(free=100))
    monkeypatch.setattr(preprocess, "decode_sources", lambda *a: pytest.fail("decoded first"))
    with pytest.raises(FervggError, match=r"not enough free space in .*MiB are free"):
        run(data, tmp_path / "out")


@pytest.mark.parametrize("where", ["file", "under_file", "unwritable"])
def test_bad_out_dir_fails_before_decoding(tmp_path, monkeypatch, where):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = {"file": blocker, "under_file": blocker / "out", "unwritable": tmp_path / "ro" / "out"}[where]
    if where == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
    monkeypatch.setattr(preprocess, "decode_sources", lambda *a: pytest.fail("decoded first"))
    with pytest.raises(FervggError, match="`out_dir`"):
        run(data, out)
    assert blocker.read_text() == "a file"


def test_bad_out_dir_is_one_line_in_a_subprocess(tmp_path, repo_root):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "blocker").write_text("a file")
    proc = run_subprocess(repo_root, "--data-dir", str(data), "--out-dir", str(tmp_path / "blocker"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: --out-dir {tmp_path / 'blocker'} is a file, not a folder"


def test_modified_array_fails_checksum(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 4, "b": 4})
    out = tmp_path / "out"
    run(data, out)
    x = np.load(out / "X_train.npy")
    x[0, 0, 0, 0] ^= 0xFF
    np.save(out / "X_train.npy", x)
    with pytest.raises(FervggError, match="checksum"):
        artifacts.load_split(out, "train")
    artifacts.load_split(out, "val")  # the untouched arrays still load


# ---------------------------------------------------------------- duplicates

def test_duplicate_audit_and_drop_leaks(tmp_path):
    data = make_dataset(tmp_path / "data", {"a": 6, "b": 6}, {"a": 2, "b": 2})
    train = data / "train"
    save(train / "a" / "copy_of_a0.png", pattern(0, 0))  # same label
    save(train / "b" / "a1_as_b.png", pattern(0, 1))  # conflicting labels
    save(data / "test" / "a" / "leak_a2.png", pattern(0, 2))  # train image also in test/

    out = tmp_path / "out"
    meta = run(data, out, "--val-fraction", "0")
    within = meta["duplicates"]["within_train_folder"]
    assert within["duplicate_groups"] == 2
    assert within["extra_copies"] == 2
    assert within["groups_with_conflicting_labels"] == 1
    conflict = within["conflicting_groups"][0]
    assert sorted(e["label"] for e in conflict) == ["a", "b"]
    assert any(e["path"].endswith("a1_as_b.png") for e in conflict)
    across = meta["duplicates"]["across_splits"]
    assert across["train-test"] == {"distinct_images_shared": 1, "test_images_affected": 1}
    assert meta["duplicates"]["dropped_from_train_as_leaks"] == 0
    assert meta["totals"]["train"] == 14
    assert pattern(0, 2).tobytes() in rows(load(out, "train").x[..., 0])

    out2 = tmp_path / "out2"
    meta = run(data, out2, "--val-fraction", "0", "--drop-leaks")
    assert meta["duplicates"]["dropped_from_train_as_leaks"] == 1
    assert meta["totals"]["train"] == 13
    assert meta["counts"]["train"]["a"] == 6  # 6 + 1 copy - 1 leak
    assert meta["settings"]["drop_leaks"] is True
    train_rows = rows(load(out2, "train").x[..., 0])
    assert pattern(0, 2).tobytes() not in train_rows
    assert not train_rows & rows(load(out2, "test").x[..., 0])


def test_val_and_test_never_share_an_image_with_train(tmp_path):
    data = tmp_path / "data"
    for label, name in enumerate(("a", "b")):
        for i in range(8):
            for copy in range(3):  # every image three times, one copy under the other label
                owner = name if copy < 2 else ("b" if name == "a" else "a")
                save(data / "train" / owner / f"{name}{i}_{copy}.png", pattern(label, i))
    out = tmp_path / "out"
    meta = run(data, out, "--val-fraction", "0.3", "--test-fraction", "0.2")
    within = meta["duplicates"]["within_train_folder"]
    assert within["duplicate_groups"] == 16 and within["extra_copies"] == 32
    assert within["groups_with_conflicting_labels"] == 16
    xs = {s: rows(load(out, s).x[..., 0]) for s in config.SPLITS}
    assert xs["val"] and xs["test"]
    assert not xs["train"] & xs["val"]
    assert not xs["train"] & xs["test"]
    assert not xs["val"] & xs["test"]
    for pair, info in meta["duplicates"]["across_splits"].items():
        assert info["distinct_images_shared"] == 0, pair
    assert sum(meta["totals"].values()) == 48


# ---------------------------------------------------------------- user errors from the command line

def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and stderr is exactly one line, "error: ...", with no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_user_errors_in_subprocess(tmp_path, repo_root):
    out = tmp_path / "out"
    missing = tmp_path / "missing"
    proc = run_subprocess(repo_root, "--data-dir", str(missing), "--out-dir", str(out))
    assert_one_line_error(proc, "data folder not found", str(missing))

    no_train = tmp_path / "no_train"
    (no_train / "test" / "a").mkdir(parents=True)
    proc = run_subprocess(repo_root, "--data-dir", str(no_train), "--out-dir", str(out))
    assert_one_line_error(proc, "no train/ folder")

    unreadable = tmp_path / "unreadable"
    for name in config.CLASS_NAMES:  # the expected classes: no class-name warning either
        (unreadable / "train" / name).mkdir(parents=True)
        (unreadable / "train" / name / "x.png").write_bytes(b"")
        (unreadable / "train" / name / "y.jpg").write_text("text")
    proc = run_subprocess(repo_root, "--data-dir", str(unreadable), "--out-dir", str(out), "--workers", "1")
    assert_one_line_error(proc, "no readable images")

    one_class = make_dataset(tmp_path / "one_class", {"a": 2})
    proc = run_subprocess(repo_root, "--data-dir", str(one_class), "--out-dir", str(out), "--workers", "1")
    assert_one_line_error(proc, "at least 2")
    assert not out.exists()


def test_error_after_warnings_in_subprocess(tmp_path, repo_root):
    """Warnings printed before a late error are "warning:" lines; the error is the last line."""
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / "train" / name).mkdir(parents=True)
        (data / "train" / name / "x.png").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_subprocess(repo_root, "--data-dir", str(data), "--out-dir", str(out), "--workers", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "no readable images" in lines[-1]
    assert all(line.startswith("warning: ") for line in lines[:-1])
    assert not out.exists()


def test_successful_subprocess_run_with_warnings(tmp_path, repo_root):
    data = make_dataset(tmp_path / "data", {"a": 3, "b": 3, "c": 2})
    out = tmp_path / "out"
    proc = run_subprocess(repo_root, "--data-dir", str(data), "--out-dir", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert any("differ from the 7 FER2013 emotions" in w for w in warnings)
    assert "no test/ folder" in proc.stdout
    meta = artifacts.read_meta(out)
    assert meta["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize("script,flag,value", [
    ("data_processing", "--val-fraction", "nan"), ("data_processing", "--max-megapixels", "0"),
    ("data_processing", "--workers", "0"), ("data_processing", "--image-size", "4"),
    ("export_model", "--tolerance", "nan"), ("export_model", "--tolerance", "-1"),
    ("predict_emotion", "--max-megapixels", "inf"), ("predict_emotion", "--threads", "0"),
    ("evaluate_model", "--max-megapixels", "-5"), ("make_demo_data", "--image-size", "100000"),
])
def test_numeric_flags_of_every_script_are_checked(script, flag, value, capsys):
    import conftest

    module = conftest.script(script)
    argv = [f"{flag}={value}"] + (["--image_path", "x.jpg"] if script == "predict_emotion" else [])
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: {value} is out of range" in err, err
