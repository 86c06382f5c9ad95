"""The Python API's batching: EmotionRecognizer.predict_many over N images vs N predict
calls, side by side in one process, with the shipped model on its default backend.

Two workloads: N FER2013 PublicTest face crops (detect=False; generated crops without
../shared) and N photos with face detection (../shared/photos, cycled; skipped without).
Each is timed --repeats times alternately; medians and the ratio are printed with the CPU.

    python bench/api_batching.py [--images 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from fervgg import EmotionRecognizer
from fervgg.common import cpu_description

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def fer_crops(count: int) -> list:
    files = sorted((SHARED / "fer2013" / "test").glob("*/*.jpg"))
    if len(files) >= count:
        return files[:: len(files) // count][:count]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(count)]


def photos(count: int) -> list[Path]:
    found = sorted(p for p in (SHARED / "photos").glob("*") if p.suffix.lower() in (".jpg", ".png"))
    return [found[i % len(found)] for i in range(count)] if found else []


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def compare(rec: EmotionRecognizer, name: str, images: list, detect: bool, repeats: int) -> None:
    single, many = [], []
    one_by_one = lambda: [rec.predict(image, detect=detect) for image in images]  # noqa: E731
    batched = lambda: rec.predict_many(images, batch_size=64, detect=detect)  # noqa: E731
    assert [[f.emotion for f in faces] for faces in one_by_one()] == \
        [[f.emotion for f in faces] for faces in batched()], "batched answers differ"
    for _ in range(repeats):
        single.append(timed(one_by_one))
        many.append(timed(batched))
    s, m = statistics.median(single), statistics.median(many)
    print(f"{name}: {len(images)} predict calls {s:.2f} s ({len(images) / s:.0f} img/s); "
          f"predict_many {m:.2f} s ({len(images) / m:.0f} img/s); ratio {s / m:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"CPU: {cpu_description()}")
    rec = EmotionRecognizer()
    print(f"model: {rec.classifier.path.name} ({rec.classifier.backend}), detector {rec.detector}")
    compare(rec, "face crops, no detection", fer_crops(args.images), False, args.repeats)
    shots = photos(args.images)
    if shots:
        compare(rec, "photos with detection", shots, True, args.repeats)
    else:
        print("photos with detection: skipped (../shared/photos not found)")


if __name__ == "__main__":
    main()
