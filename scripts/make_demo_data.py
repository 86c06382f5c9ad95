"""Draw a small synthetic face dataset, in FER2013's folder layout, for the demo and tests:
the command line of fervgg.demo_data.

    <out-dir>/train/<emotion>/<emotion>_NNN.png   (48x48 grayscale)
    <out-dir>/test/<emotion>/<emotion>_NNN.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import HelpFormatter, number, parse_settings, run_cli
from fervgg import config
from fervgg.demo_data import DemoDataSettings, write_demo_data


def parse_args(argv=None) -> DemoDataSettings:
    R = DemoDataSettings.RANGES  # the settings' own bounds
    p = argparse.ArgumentParser(description="Generate synthetic face images per emotion (demo data).",
                                formatter_class=HelpFormatter)
    p.add_argument("--out-dir", type=Path, default=config.DEMO_DATA_DIR, help="dataset folder to create")
    p.add_argument("--train-per-class", type=int, default=config.DEMO_TRAIN_PER_CLASS,
                   help="training images per emotion")
    p.add_argument("--test-per-class", type=int, default=config.DEMO_TEST_PER_CLASS, help="test images per emotion")
    p.add_argument("--image-size", type=number(int, **R["image_size"]), default=config.IMAGE_SIZE,
                   help="side length in pixels")
    p.add_argument("--seed", type=number(int, **R["seed"]), default=config.SEED)
    p.add_argument("--force", action="store_true", help="write into a non-empty --out-dir")
    return parse_settings(p, argv, DemoDataSettings)


def main(argv=None) -> int:
    demo = write_demo_data(parse_args(argv))
    if demo.written:
        print(f"wrote {demo.written} synthetic faces ({len(config.CLASS_NAMES)} emotions) to {demo.out_dir}")
    else:
        print(f"demo data already in {demo.out_dir} (use --force to rewrite it)")
    return 0


if __name__ == "__main__":
    run_cli(main)
