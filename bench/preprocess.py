"""Preprocessing speed: scripts/data_processing.py vs a bare single-process PIL loop.

The bare loop only opens, converts to grayscale and resizes each file: the least any
preprocessing must do. The pipeline also checks limits, honours EXIF, hashes, audits
duplicates, splits and writes checksummed arrays. Both run on the same files, with the
page cache warmed first, in one run.

    python bench/preprocess.py --data-dir ../shared/fer2013
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def image_files(data_dir: Path) -> list[Path]:
    return sorted(p for split in ("train", "test") for p in (data_dir / split).glob("*/*") if p.is_file())


def bare_loop(files: list[Path], size: int) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            im.convert("L").resize((size, size))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "fer2013")
    p.add_argument("--image-size", type=int, default=48)
    args = p.parse_args()
    files = image_files(args.data_dir)
    if not files:
        sys.exit(f"error: no images under {args.data_dir}/train|test/<class>/")
    for path in files:  # warm the page cache so neither side pays for the disk
        path.read_bytes()

    bare = bare_loop(files, args.image_size)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "data_processing.py"),
                        "--data-dir", str(args.data_dir), "--out-dir", out,
                        "--image-size", str(args.image_size)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pipeline = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(f"files: {len(files)}")
    print(f"bare PIL loop (1 process, open+convert+resize): {bare:7.2f} s  {len(files) / bare:8.0f} img/s")
    print(f"data_processing.py (whole script, all cores):   {pipeline:7.2f} s  {len(files) / pipeline:8.0f} img/s")
    print(f"time ratio pipeline/bare: {pipeline / bare:.2f}  (target <= 1.5)")
    print(f"peak memory of data_processing.py (largest process): {peak_mib:.0f} MiB  (target < 1024)")


if __name__ == "__main__":
    main()
