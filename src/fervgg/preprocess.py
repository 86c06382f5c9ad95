"""Turning an image-folder dataset into the arrays training and evaluation read:
`preprocess(PreprocessSettings(...)) -> Preprocessed`.

    <data_dir>/train/<class>/*  (+ optional <data_dir>/test/<class>/*)
      -> <out_dir>/X_{train,val,test}.npy  uint8 (N, S, S, 1)
         <out_dir>/y_{train,val,test}.npy  int64 (N,) class indices
         <out_dir>/meta.json               classes, counts, audit, checksums

Images are decoded in parallel, converted to grayscale and resized. Bad files are
skipped and listed, exact duplicates are audited, and every file is written
atomically with meta.json last, so an interrupted run never leaves arrays that look valid.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from fervgg import config
from fervgg.artifacts import array_names, bytes_needed, write_dataset
from fervgg.common import FervggError, cpu_count, library_versions, writable_folder
from fervgg.folders import class_folders, decode_all
from fervgg.imaging import list_files, set_max_pixels
from fervgg.settings import check_settings


@dataclass
class PreprocessSettings:
    """Every setting of preprocessing (data_processing.py has a flag for each)."""
    data_dir: Path = config.DATA_DIR  # holding train/<class>/ and optionally test/<class>/
    out_dir: Path = config.PREPROCESSED_DIR
    image_size: int = config.IMAGE_SIZE  # output side; images are resized to a square
    val_fraction: float = config.VAL_FRACTION  # of train, held out for validation (stratified, seeded)
    test_fraction: float = config.TEST_FRACTION  # of train, held out as test when there is no test/
    seed: int = config.SEED
    drop_leaks: bool = False  # remove from train the images that also occur in val or test
    max_megapixels: float = config.MAX_IMAGE_PIXELS / 1e6  # decoded-size limit (decompression bombs)
    workers: int = field(default_factory=cpu_count)  # decoding processes

    RANGES: ClassVar[dict[str, dict]] = {
        "image_size": {"low": 8, "high": 512}, "val_fraction": {"low": 0, "below": 1},
        "test_fraction": {"low": 0, "below": 1}, "seed": {"low": 0},
        "max_megapixels": {"above": 0, "high": 10_000}, "workers": {"low": 1, "high": 256},
    }

    def __post_init__(self):
        check_settings(self, self.RANGES)
        if self.val_fraction + self.test_fraction >= 1:
            raise FervggError("`val_fraction` + `test_fraction` must be below 1")


@dataclass
class Preprocessed:
    out_dir: Path
    meta: dict  # what meta.json holds
    has_test: bool  # the data had a test/ folder (else test was split from train)


# ---------------------------------------------------------------- discovery

@dataclass
class Found:
    """What discover() found in the dataset folder."""
    classes: list[str]
    sources: dict[str, list[tuple[Path, int]]]  # "train"/"test": [(path, label)]
    ignored: list[dict]  # files not used, with the reason
    warnings: list[str]
    hidden: list[Path]  # hidden files and folders (.DS_Store, .git, ...), skipped


def discover(data_dir: Path) -> Found:
    """Find classes and files; refuse a class folder without files (a class never seen)."""
    if not data_dir.is_dir():
        raise FervggError(f"data folder not found: {data_dir} (pass `data_dir` PATH)")
    train_dir = data_dir / "train"
    if not train_dir.is_dir():
        raise FervggError(
            f"no train/ folder in {data_dir}: expected {data_dir}/train/<class>/<images> "
            "(one folder per emotion, as in Kaggle's FER2013)"
        )
    classes = class_folders(train_dir)
    if len(classes) < 2:
        raise FervggError(f"{train_dir} has {len(classes)} class folder(s); at least 2 are needed")
    warnings = []
    if tuple(classes) != config.CLASS_NAMES:
        extra = sorted(set(classes) - set(config.CLASS_NAMES))
        missing = sorted(set(config.CLASS_NAMES) - set(classes))
        warnings.append(
            f"class folders differ from the 7 FER2013 emotions (extra: {extra or 'none'}, "
            f"missing: {missing or 'none'}); using the {len(classes)} folders found: {classes}"
        )
    found = Found(classes, {}, [], warnings, [])
    for split in ("train", "test"):
        split_dir = data_dir / split
        if not split_dir.is_dir():
            continue
        files: list[tuple[Path, int]] = []
        for path in sorted(split_dir.iterdir()):
            if path.name.startswith("."):
                found.hidden.append(path)
            elif path.is_file():
                found.ignored.append({"path": str(path), "reason": "not inside a class folder"})
        for name in class_folders(split_dir):
            if name not in classes:
                warnings.append(f"{split}/{name}/ is not a class of train/; its images are ignored")
                continue
            listed = list_files(split_dir / name, found.hidden)
            if not listed and split == "train":
                empty = [c for c in classes if not list_files(train_dir / c)]
                raise FervggError(f"class folder(s) without images in {train_dir}: {', '.join(empty)}; the "
                                "model would learn a class it never sees: add images or remove the folder(s)")
            files += [(path, classes.index(name)) for path in listed]
        found.sources[split] = files
    return found


# ---------------------------------------------------------------- splitting and audit

def pixel_std(pixels: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per-image standard deviation, in chunks (a float copy of all images would cost GBs)."""
    flat = pixels.reshape(len(pixels), -1)
    return np.concatenate([flat[i:i + chunk].std(axis=1, dtype=np.float32)
                           for i in range(0, len(flat), chunk)] or [np.zeros(0, np.float32)])


def content_hashes(pixels: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in pixels]


def assign_splits(labels: np.ndarray, hashes: list[bytes], val_fraction: float,
                  test_fraction: float, seed: int) -> np.ndarray:
    """Stratified, seeded assignment of train images to 'train'/'val'/'test'.

    Exact copies follow their first occurrence, so val/test never share an image with train.
    """
    first_of: dict[bytes, int] = {}
    for i, h in enumerate(hashes):
        first_of.setdefault(h, i)
    representatives = np.array(sorted(set(first_of.values())), dtype=np.int64)
    rng = np.random.default_rng(seed)
    group_split: dict[int, str] = {}
    for c in np.unique(labels):
        reps = representatives[labels[representatives] == c]
        reps = reps[rng.permutation(len(reps))]
        n_test = int(round(test_fraction * len(reps)))
        n_val = int(round(val_fraction * len(reps)))
        while n_test + n_val >= len(reps) and n_test + n_val > 0:  # keep one in train
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        for k, rep in enumerate(reps):
            group_split[int(rep)] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return np.array([group_split[first_of[h]] for h in hashes])


def empty_val_warning(val_fraction: float, largest_class: int) -> str:
    """Each class's share of validation images is rounded, so tiny classes give none at all."""
    fix = (f"raise the validation fraction (e.g. --val-fraction {min(0.5, math.ceil(100 / largest_class) / 100):g})"
           if largest_class > 1 else "add images: a class needs two to lend one to validation")
    return (f"no validation images: a validation fraction of {val_fraction:g} rounds to 0 in every class (at most "
            f"{largest_class} images each), and model_training.py needs some; {fix}")


def duplicate_audit(hashes: dict[str, list[bytes]], labels: dict[str, np.ndarray],
                    paths: dict[str, list[str]], classes: list[str], source_train: str) -> dict:
    """Pixel-exact duplicates within the train folder, across splits, and label conflicts."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes[source_train]):
        groups[h].append(i)
    dup_groups = [g for g in groups.values() if len(g) > 1]
    train_labels = labels[source_train]
    conflicts = [g for g in dup_groups if len(set(train_labels[g].tolist())) > 1]

    def describe(group):
        return [{"path": paths[source_train][i], "label": classes[int(train_labels[i])]} for i in group]

    cross = {}
    split_sets = {s: set(h) for s, h in hashes.items() if s != source_train}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if a in split_sets and b in split_sets:
            shared = split_sets[a] & split_sets[b]
            cross[f"{a}-{b}"] = {
                "distinct_images_shared": len(shared),
                f"{b}_images_affected": sum(h in shared for h in hashes[b]),
            }
    return {
        "method": "identical decoded pixels after grayscale conversion and resizing",
        "within_train_folder": {
            "duplicate_groups": len(dup_groups),
            "extra_copies": sum(len(g) - 1 for g in dup_groups),
            "groups_with_conflicting_labels": len(conflicts),
            "conflicting_groups": [describe(g) for g in conflicts],
            "groups": [describe(g) for g in dup_groups],
        },
        "across_splits": cross,
    }


# ---------------------------------------------------------------- decoding and writing

def decode_sources(data_dir: Path, sources: dict[str, list[tuple[Path, int]]], size: int, workers: int):
    """Decode train/ (and test/): {source: (pixels, labels, relative paths)} of the readable
    files, and the unreadable ones with their reasons."""
    decoded: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    bad_files = []
    for source, files in sources.items():
        if not files:
            raise FervggError(f"{data_dir / source} has no image files in its class folders")
        paths = [p for p, _ in files]
        pixels, ok, reasons = decode_all(paths, size, workers, f"decoding {source}")
        bad_files += [{"path": str(paths[i]), "reason": r} for i, r in sorted(reasons.items())]
        if not ok.any():
            raise FervggError(f"no readable images in {data_dir / source} ({len(paths)} files, all unusable)")
        labels = np.array([lbl for (_, lbl), good in zip(files, ok) if good], dtype=np.int64)
        rel = [str(p.relative_to(data_dir)) for p, good in zip(paths, ok) if good]
        decoded[source] = (pixels, labels, rel)
    return decoded, bad_files


def split_arrays(decoded: dict, assignment: np.ndarray, train_hashes: list[bytes]):
    """Pixels, labels, paths and content hashes per split (test/ as is when there is one), plus
    the whole train folder's labels, paths and hashes under "train_folder" for the audit."""
    train_pixels, train_labels, train_paths = decoded["train"]
    arrays: dict[str, np.ndarray] = {}
    hashes = {"train_folder": train_hashes}
    labels = {"train_folder": train_labels}
    paths = {"train_folder": train_paths}
    for split in config.SPLITS:
        if split == "test" and "test" in decoded:
            px, lb, pt = decoded["test"]
            hs = content_hashes(px)
        else:
            idx = np.flatnonzero(assignment == split)
            px, lb, pt = train_pixels[idx], train_labels[idx], [train_paths[i] for i in idx]
            hs = [train_hashes[i] for i in idx]
        arrays[split], labels[split], paths[split], hashes[split] = px, lb, pt, hs
    return arrays, labels, paths, hashes


def check_out_dir(out_dir: Path, n_files: int, image_size: int) -> None:
    """Before decoding: the output folder is writable and has room for the new arrays
    beside the old ones (they are swapped in at the end)."""
    existing = writable_folder(out_dir, "`out_dir`")
    needed, free = bytes_needed(n_files, image_size), shutil.disk_usage(existing).free
    if free < needed:
        raise FervggError(f"not enough free space in {out_dir}: the arrays need about {needed / 2**20:.1f} MiB, "
                        f"{free / 2**20:.1f} MiB are free")


def preprocess(settings: PreprocessSettings) -> Preprocessed:
    """Decode, split, audit and write the dataset `settings` describe; FervggError for a
    dataset that cannot be used (nothing is written then)."""
    set_max_pixels(settings.max_megapixels * 1e6)  # before the workers fork: they inherit it
    started = time.time()
    data_dir = settings.data_dir.expanduser().resolve()
    found = discover(data_dir)
    classes = found.classes
    for w in found.warnings:
        print(f"warning: {w}", file=sys.stderr)
    check_out_dir(settings.out_dir, sum(len(f) for f in found.sources.values()), settings.image_size)

    decoded, bad_files = decode_sources(data_dir, found.sources, settings.image_size, settings.workers)
    bad_files = found.ignored + bad_files
    train_pixels, train_labels, train_paths = decoded["train"]
    unusable = [c for k, c in enumerate(classes) if not (train_labels == k).any()]
    if unusable:
        raise FervggError(f"no usable training images in class folder(s) {', '.join(unusable)} of "
                        f"{data_dir / 'train'} (all unreadable); the model would learn a class it never sees")
    has_test = "test" in decoded
    train_hashes = content_hashes(train_pixels)
    assignment = assign_splits(train_labels, train_hashes, settings.val_fraction,
                               0.0 if has_test else settings.test_fraction, settings.seed)

    arrays, labels, paths, hashes = split_arrays(decoded, assignment, train_hashes)
    audit = duplicate_audit(hashes, labels, paths, classes, "train_folder")
    dropped = 0
    if settings.drop_leaks:
        elsewhere = set(hashes["val"]) | set(hashes["test"])
        keep = np.array([h not in elsewhere for h in hashes["train"]], dtype=bool)
        dropped = int((~keep).sum())
        arrays["train"], labels["train"] = arrays["train"][keep], labels["train"][keep]
    audit["dropped_from_train_as_leaks"] = dropped
    if len(arrays["train"]) == 0:
        raise FervggError("no training images left after splitting; lower `val_fraction`/`test_fraction`")

    blank = config.NEAR_BLANK_STD
    near_blank = [paths["train_folder"][i] for i in np.flatnonzero(pixel_std(train_pixels) < blank)]
    if has_test:
        near_blank += [paths["test"][i] for i in np.flatnonzero(pixel_std(arrays["test"]) < blank)]

    counts = {s: {c: int((labels[s] == k).sum()) for k, c in enumerate(classes)} for s in config.SPLITS}
    if settings.val_fraction > 0 and len(labels["val"]) == 0:
        found.warnings.append(empty_val_warning(settings.val_fraction, max(counts["train"].values())))
        print(f"warning: {found.warnings[-1]}", file=sys.stderr)

    def describe(sha: dict[str, str]) -> dict:
        return {
            "source_dir": str(data_dir),
            "class_names": classes,
            "image_size": settings.image_size,
            "settings": {
                "val_fraction": settings.val_fraction,
                "test_fraction": None if has_test else settings.test_fraction,
                "seed": settings.seed,
                "drop_leaks": settings.drop_leaks,
                "test_source": "test/ folder" if has_test else "stratified split of train/",
            },
            "counts": counts,
            "totals": {s: int(len(labels[s])) for s in config.SPLITS},
            "arrays": {
                name: {"dtype": str(a.dtype), "shape": list(a.shape)}
                for s in config.SPLITS
                for name, a in zip(array_names(s), (arrays[s][..., None], labels[s]))
            },
            "sha256": sha,
            "bad_files": bad_files,
            "hidden_files_skipped": [str(p) for p in found.hidden],
            "duplicates": audit,
            "near_blank_images": near_blank,
            "warnings": found.warnings,
            "versions": library_versions("numpy", "PIL"),
            "elapsed_seconds": round(time.time() - started, 2),
        }

    try:
        meta = write_dataset(settings.out_dir, arrays, labels, describe)
    except OSError as exc:
        reason = exc.strerror or f"{exc} (a short write: is the disk full?)"  # numpy's own OSError
        raise FervggError(f"cannot write the arrays to {settings.out_dir}: {reason}; the previous "
                        "output there (if any) is unchanged") from None
    return Preprocessed(settings.out_dir, meta, has_test)
