"""What ten-crop TTA costs on the photo path: EmotionRecognizer.predict per photo (decode,
detection, crops, classification) with one view and with ten-crop, side by side in one
process, on the same photos, the shipped model on its default backend (or --model).

Two photo sets: ../shared/photos (one or two faces each) and ../shared/faces/images (WIDER
FACE group photos, many faces each). Each set is timed --repeats times, the two modes
alternating; medians per photo and per face and the ratio are printed with the CPU.
The accuracy side of the trade is evaluate_model.py's (--tta or not); see BENCHMARKS.md.

    python bench/tta_cost.py [--model M.keras] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fervgg import EmotionRecognizer
from fervgg.common import cpu_description

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SETS = {"photos (1-2 faces)": SHARED / "photos", "group photos (WIDER FACE)": SHARED / "faces" / "images"}


def images_in(folder: Path, limit: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]


def seconds_per_photo(rec: EmotionRecognizer, files: list[Path], tta: bool) -> tuple[float, int]:
    """Wall seconds for all of `files` (each a separate predict call) and the faces found."""
    faces = 0
    start = time.perf_counter()
    for path in files:  # what rec.predict does, with TTA chosen per call
        prepared = rec.prepare(path)
        rec.classify([prepared], tta=tta)
        faces += len(prepared.boxes)
    return time.perf_counter() - start, faces


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="a .keras model (default: the shipped one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=30, help="at most this many photos per set")
    p.add_argument("--threads", type=int, default=None, help="LiteRT threads (default: all cores)")
    args = p.parse_args()

    sets = {name: images_in(folder, args.limit) for name, folder in SETS.items()}
    sets = {name: files for name, files in sets.items() if files}
    if not sets:
        sys.exit(f"error: no photos in {' or '.join(map(str, SETS.values()))} (needs ../shared)")
    rec = EmotionRecognizer(**({"model": args.model} if args.model else {}), threads=args.threads)
    print(f"CPU: {cpu_description()}")
    clf = rec.classifier
    print(f"model: {clf.path.name} ({clf.backend}), crop size {clf.crop_size or 'none'}")
    for name, files in sets.items():
        seconds_per_photo(rec, files[:2], False)  # warm-up: interpreters, page cache
        seconds_per_photo(rec, files[:2], True)
        runs = {False: [], True: []}
        for _ in range(args.repeats):
            for tta in (False, True):
                seconds, faces = seconds_per_photo(rec, files, tta)
                runs[tta].append(seconds)
        one, ten = statistics.median(runs[False]), statistics.median(runs[True])
        n = len(files)
        print(f"{name}: {n} photos, {faces} faces")
        print(f"  one view : {1000 * one / n:7.1f} ms/photo  {1000 * one / max(faces, 1):6.1f} ms/face")
        print(f"  ten-crop : {1000 * ten / n:7.1f} ms/photo  {1000 * ten / max(faces, 1):6.1f} ms/face")
        print(f"  ten-crop/one view: {ten / one:.2f}x per photo")


if __name__ == "__main__":
    main()
