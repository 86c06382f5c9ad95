"""The preprocessed arrays on disk, this module's format alone: names, writing, checks on read.

Written by preprocessing (fervgg.preprocess), read by training and evaluation. `meta.json` is
written last and holds the SHA-256 of every array, so stale, mismatched or
half-written arrays are detected before anything trains on them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fervgg import config
from fervgg.common import FervggError, atomic_save_npy, atomic_write_json, first_line, read_json, sha256_file, utc_now

FORMAT_VERSION = 1


def array_names(split: str) -> tuple[str, str]:
    return f"X_{split}.npy", f"y_{split}.npy"


@dataclass
class Split:
    """Labelled images: a split of the arrays, or an image folder to evaluate."""
    name: str  # train, val, test (or "images" for a folder)
    x: np.ndarray  # uint8 (N, S, S, 1)
    y: np.ndarray  # int64 (N,), class indices
    class_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # where the images came from, for metrics.json


STAGING_DIR = ".incoming"  # inside the output folder: same file system, so the swap is renames


def write_dataset(out_dir: Path, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                  describe: Callable[[dict[str, str]], dict]) -> dict:
    """Every split's X (N, S, S) uint8 and y, then meta.json (`describe(sha256 by file name)`
    plus the format version and creation time); returns the meta.

    The new set is written beside the old one first and swapped in by renames at the end,
    so a full disk, a crash or Ctrl+C while writing leaves a previous output intact. During
    the swap itself (renames only) meta.json goes first and comes back last: a folder
    without it is visibly incomplete, never silently mixed.
    """
    out_dir = Path(out_dir)
    staging = out_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while writing
    staging.mkdir(parents=True)
    try:
        sha = {}
        for split in config.SPLITS:
            x_name, y_name = array_names(split)
            atomic_save_npy(staging / x_name, np.ascontiguousarray(arrays[split][..., None]))
            atomic_save_npy(staging / y_name, labels[split].astype(np.int64))
            sha[x_name] = sha256_file(staging / x_name)
            sha[y_name] = sha256_file(staging / y_name)
        meta = {"format_version": FORMAT_VERSION, "created": utc_now(), **describe(sha)}
        atomic_write_json(staging / config.META_FILE, meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (out_dir / config.META_FILE).unlink(missing_ok=True)
    for name in sha:
        os.replace(staging / name, out_dir / name)
    os.replace(staging / config.META_FILE, out_dir / config.META_FILE)
    staging.rmdir()
    return meta


def bytes_needed(n_images: int, image_size: int) -> int:
    """Disk space the arrays of `n_images` images take (X uint8 + y int64, headers aside)."""
    return n_images * (image_size * image_size + 8) + 6 * 256


def read_meta(data_dir: Path) -> dict:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FervggError(
            f"preprocessed data folder not found: {data_dir} "
            "(run scripts/data_processing.py first, or pass `data_dir`)"
        )
    meta_path = data_dir / config.META_FILE
    if not meta_path.is_file() and not any(data_dir.glob("*.npy")):  # a fresh clone's placeholder folder
        raise FervggError(f"no preprocessed data in {data_dir} (run scripts/data_processing.py first, "
                          "or pass `data_dir`)")
    if not meta_path.is_file():
        raise FervggError(
            f"{meta_path} is missing: the arrays in {data_dir} are incomplete or from an "
            "interrupted run; run scripts/data_processing.py again"
        )
    meta = read_json(meta_path, "preprocessing metadata")
    if not isinstance(meta, dict):
        raise FervggError(f"{meta_path} is not a preprocessing metadata object: re-run scripts/data_processing.py")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise FervggError(f"{meta_path} has format version {version}; this code reads version {FORMAT_VERSION}: "
                        "re-run scripts/data_processing.py (or update the code)")
    for key in ("class_names", "image_size", "sha256", "counts"):
        if key not in meta:
            raise FervggError(f"{meta_path} has no '{key}': re-run scripts/data_processing.py")
    return meta


def load_split(data_dir: Path, split: str, meta: dict | None = None, verify: bool = True) -> Split:
    """Load X/y of one split and check them against meta.json; FervggError if anything is off."""
    data_dir = Path(data_dir)
    meta = meta if meta is not None else read_meta(data_dir)
    size = int(meta["image_size"])
    n_classes = len(meta["class_names"])
    x_name, y_name = array_names(split)
    arrays = {}
    for name in (x_name, y_name):
        path = data_dir / name
        if not path.is_file():
            raise FervggError(f"{path} is missing: re-run scripts/data_processing.py")
        expected = meta["sha256"].get(name)
        if verify and expected is None:
            raise FervggError(f"{data_dir / config.META_FILE} has no checksum for {name}: re-run preprocessing")
        if verify and sha256_file(path) != expected:
            raise FervggError(
                f"{path} does not match the checksum in meta.json (stale or modified); "
                "re-run scripts/data_processing.py"
            )
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FervggError(f"{path} is not a valid .npy array ({exc})") from None
    x, y = arrays[x_name], arrays[y_name]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (size, size, 1):
        raise FervggError(
            f"{data_dir / x_name} has dtype {x.dtype} and shape {x.shape}; expected uint8 "
            f"(N, {size}, {size}, 1) as recorded in meta.json: re-run scripts/data_processing.py"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise FervggError(f"{data_dir / y_name} must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise FervggError(f"{x_name} has {len(x)} images but {y_name} has {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise FervggError(
            f"{data_dir / y_name} has labels outside 0..{n_classes - 1} "
            f"({n_classes} classes in meta.json)"
        )
    return Split(split, x, y.astype(np.int64), list(meta["class_names"]))


def load_teacher(path: Path, n_images: int, n_classes: int) -> np.ndarray:
    """A distillation teacher: a (N, C) .npy of probabilities, one row per training image in
    X_train.npy's order (e.g. the mean of several models' predictions); FervggError if it
    cannot be that."""
    path = Path(path)
    if not path.is_file():
        raise FervggError(f"teacher file not found: {path} (expected a .npy of shape ({n_images}, {n_classes}))")
    # A float64 (N, C) array and its header, no more: anything larger is not a teacher file.
    limit = n_images * n_classes * 8 + 4096
    if path.stat().st_size > limit:
        raise FervggError(f"{path} is {path.stat().st_size} bytes, too large for ({n_images}, {n_classes}) "
                          "probabilities")
    try:
        probs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FervggError(f"{path} is not a valid .npy array ({first_line(exc)})") from None
    if not np.issubdtype(probs.dtype, np.floating) or probs.shape != (n_images, n_classes):
        raise FervggError(f"{path} holds {probs.dtype} {probs.shape}; a teacher is float ({n_images}, {n_classes}): "
                          "one row of class probabilities per training image, in X_train.npy's order")
    if not np.isfinite(probs).all() or (probs < 0).any() or not (probs.sum(axis=1) > 0).all():
        raise FervggError(f"{path} is not probabilities: every value must be finite and >= 0, every row sum > 0")
    return probs.astype(np.float32)


def load_teachers(paths: list[Path], n_images: int, n_classes: int) -> np.ndarray:
    """The mean of several teachers' probabilities (each row normalised first): an ensemble."""
    total = np.zeros((n_images, n_classes), np.float64)
    for path in paths:
        probs = load_teacher(path, n_images, n_classes).astype(np.float64)
        total += probs / probs.sum(axis=1, keepdims=True)
    return (total / len(paths)).astype(np.float32)
