"""Turn an image-folder dataset into the arrays the other scripts read: the command line of
fervgg.preprocess.

    data/train/<class>/*  (+ optional data/test/<class>/*)
      -> preprocessed_data/X_{train,val,test}.npy  uint8 (N, 48, 48, 1)
         preprocessed_data/y_{train,val,test}.npy  int64 (N,) class indices
         preprocessed_data/meta.json               classes, counts, audit, checksums
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import HelpFormatter, as_flags, number, parse_settings, run_cli
from fervgg import config
from fervgg.common import cpu_count, format_table, printable
from fervgg.preprocess import Preprocessed, PreprocessSettings, preprocess


def parse_args(argv=None) -> PreprocessSettings:
    R = PreprocessSettings.RANGES  # the settings' own bounds
    p = argparse.ArgumentParser(
        description="Preprocess an image-folder dataset (train/<class>/, optional test/<class>/)\n"
        "into uint8 48x48 grayscale arrays plus meta.json.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, default=config.DATA_DIR,
                   help="dataset folder holding train/<class>/ and optionally test/<class>/")
    p.add_argument("--out-dir", type=Path, default=config.PREPROCESSED_DIR,
                   help="where X_*.npy, y_*.npy and meta.json are written")
    p.add_argument("--image-size", type=number(int, **R["image_size"]), default=config.IMAGE_SIZE,
                   help="output side length in pixels (images are resized to a square)")
    p.add_argument("--val-fraction", type=number(float, **R["val_fraction"]), default=config.VAL_FRACTION,
                   help="fraction of train held out for validation (stratified, seeded)")
    p.add_argument("--test-fraction", type=number(float, **R["test_fraction"]), default=config.TEST_FRACTION,
                   help="fraction of train held out as test, only when there is no test/ folder")
    p.add_argument("--seed", type=number(int, **R["seed"]), default=config.SEED, help="random seed of the splits")
    p.add_argument("--drop-leaks", action="store_true",
                   help="remove from train the images that also occur (pixel-exact) in val or test")
    p.add_argument("--max-megapixels", type=number(float, **R["max_megapixels"]),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="refuse images larger than this when decoded (decompression bombs); big "
                        "JPEGs decode at reduced size and rarely reach it")
    p.add_argument("--workers", type=number(int, **R["workers"]), default=cpu_count(),
                   help="decoding processes")
    return parse_settings(p, argv, PreprocessSettings)


def main(argv=None) -> int:
    print_summary(preprocess(parse_args(argv)))
    return 0


def print_summary(result: Preprocessed) -> None:
    meta, out_dir = result.meta, result.out_dir
    classes, counts = meta["class_names"], meta["counts"]
    rows = [[c] + [counts[s][c] for s in config.SPLITS] for c in classes]
    rows.append(["total"] + [meta["totals"][s] for s in config.SPLITS])
    print()
    print(format_table(["class", "train", "val", "test"], rows))
    within = meta["duplicates"]["within_train_folder"]
    print(f"\nbad files skipped: {len(meta['bad_files'])}")
    for bad in meta["bad_files"][:10]:
        print(f"  {printable(bad['path'])}: {as_flags(bad['reason'])}")
    if len(meta["bad_files"]) > 10:
        print(f"  ... {len(meta['bad_files']) - 10} more in meta.json")
    print(f"duplicates in train/ folder: {within['extra_copies']} extra copies in "
          f"{within['duplicate_groups']} groups; {within['groups_with_conflicting_labels']} groups "
          "have conflicting labels (val never shares an image with train)")
    for pair, info in meta["duplicates"]["across_splits"].items():
        if info["distinct_images_shared"]:
            print(f"  shared {pair}: {info['distinct_images_shared']} distinct images")
    if meta["duplicates"]["dropped_from_train_as_leaks"]:
        print(f"  --drop-leaks removed {meta['duplicates']['dropped_from_train_as_leaks']} train images")
    hidden = meta["hidden_files_skipped"]
    if hidden:
        print(f"hidden files skipped: {len(hidden)} (names starting with '.', Thumbs.db, desktop.ini; "
              "listed in meta.json)")
    print(f"near-blank images: {len(meta['near_blank_images'])}")
    if not result.has_test:
        print("no test/ folder: the test split was taken from train (stratified, seeded)")
    print(f"wrote {out_dir}/X_*.npy, y_*.npy and {config.META_FILE} in {meta['elapsed_seconds']:.1f} s")


if __name__ == "__main__":
    run_cli(main)
