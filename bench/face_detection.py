"""Face detectors side by side on real photos with true boxes: precision, recall, time.

Reads ../shared/faces/ (60 WIDER FACE validation photos, annotations.json; see its
README) and runs every detector of fervgg.faces.DETECTORS through faces.detect_faces,
the path prediction uses, photo by photo in turn (so a busy machine slows them alike).

Scoring, per face size (all, >= 40 px, >= 80 px; a face's size is its box height):
a detection is right when it overlaps a true face of that size at IoU >= 0.5 (each face
counts once, best-scoring detection first). `ignore` boxes, and true faces below the size
being scored, count neither way: they are never misses, and a detection on one (IoU >= 0.5)
is neither right nor wrong. Every other detection is a false one. Time: the median and the
mean of detect_faces per photo (decoded beforehand; detectors loaded and run once first).

    python bench/face_detection.py                       # all detectors, about 3 minutes
    python bench/face_detection.py --detectors retinaface opencv --repeats 3
    python bench/face_detection.py --detectors retinaface --max-sides 1024 800 640  # speed vs small faces
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from PIL import Image

from fervgg import config, faces
from fervgg.common import cpu_description

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZES = (0, 40, 80)  # scored face sizes: all, >= 40 px, >= 80 px (box height)
MATCH_IOU = 0.5


def load(folder: Path) -> list[tuple[str, Image.Image, list, list]]:
    entries = json.loads((folder / "annotations.json").read_text())["images"]
    photos = []
    for entry in entries:
        with Image.open(folder / entry["file"]) as image:
            photos.append((entry["file"], image.convert("RGB"), entry["boxes"], entry["ignore"]))
    return photos


def score(found: list[list], photos: list, min_size: int) -> tuple[int, int, int]:
    """(right, false, true faces) over all photos, for faces at least min_size px tall."""
    right = false = total = 0
    for boxes, (_, _, truth, ignore) in zip(found, photos):
        faces_here = [t for t in truth if t[3] >= min_size]
        neutral = [t for t in truth if t[3] < min_size] + list(ignore)
        total += len(faces_here)
        taken = [False] * len(faces_here)
        for box in boxes:
            best, which = MATCH_IOU, -1
            for i, t in enumerate(faces_here):
                overlap = faces.iou(box, t)
                if not taken[i] and overlap >= best:
                    best, which = overlap, i
            if which >= 0:
                taken[which] = True
                right += 1
            elif not any(faces.iou(box, t) >= MATCH_IOU for t in neutral):
                false += 1
    return right, false, total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "faces",
                   help="folder with annotations.json and the photos")
    p.add_argument("--detectors", nargs="+", choices=faces.DETECTORS, default=list(faces.DETECTORS))
    p.add_argument("--repeats", type=int, default=1, help="runs per photo and detector; the fastest counts")
    p.add_argument("--max-sides", type=int, nargs="+", default=[config.DETECT_MAX_SIDE], metavar="PIXELS",
                   help="longest side photos are downscaled to before detection (each one a row)")
    args = p.parse_args(argv)
    runs = [(name, side) for name in args.detectors for side in args.max_sides]

    photos = load(args.faces)
    n_faces = sum(len(t) for _, _, t, _ in photos)
    print(f"CPU: {cpu_description()}")
    print(f"{len(photos)} photos, {n_faces} true faces "
          + ", ".join(f"{sum(b[3] >= s for _, _, t, _ in photos for b in t)} >= {s} px" for s in SIZES[1:])
          + f", {sum(len(i) for _, _, _, i in photos)} ignore boxes; detectors: {', '.join(args.detectors)}")
    found = {r: [] for r in runs}
    times = {r: [] for r in runs}
    for name in args.detectors:  # load and warm up, untimed
        start = time.perf_counter()
        faces.load_detector(name)
        faces.detect_faces(photos[0][1], name)
        print(f"  {name}: loaded and first photo in {time.perf_counter() - start:.1f} s")
    for _, image, _, _ in photos:
        for name, side in runs:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                boxes = faces.detect_faces(image, name, max_side=side)
                best = min(best, time.perf_counter() - start)
            found[name, side].append(boxes)
            times[name, side].append(best)

    print()
    print("| detector | " + " | ".join(f"recall {lab} | precision {lab}" for lab in ("all", ">= 40 px", ">= 80 px"))
          + " | ms per photo (median / mean) |")
    print("|---" * (2 + 2 * len(SIZES)) + "|")
    for name, side in runs:
        cells = []
        for size in SIZES:
            right, false, total = score(found[name, side], photos, size)
            cells += [f"{right / max(total, 1):.3f} ({right}/{total})", f"{right / max(right + false, 1):.3f}"]
        ms = [t * 1000 for t in times[name, side]]
        label = name if len(args.max_sides) == 1 else f"{name}, max side {side}"
        print(f"| {label} | " + " | ".join(cells) + f" | {statistics.median(ms):.0f} / {statistics.mean(ms):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
