"""Per-face classification speed: the int8 model vs the float .tflite, on the same crops, in
one process, alternately (--repeats rounds, medians), for one thread and for all CPUs, on one
view and with ten-crop TTA. Prints the accuracies the export measured (the sidecar's
"litert_int8_export") beside the speeds, and the CPU, whose instructions decide the ratio
(int8 gains most with AVX512-VNNI / AVX-VNNI, little on plain AVX2).

    python bench/int8_speed.py                                   # the shipped model
    python bench/int8_speed.py --model models/best_model.keras   # after export_model.py --int8-data
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg.classifiers import int8_path, open_classifier
from fervgg.common import cpu_count, cpu_description

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def crops(count: int) -> tuple[np.ndarray, str]:
    """FER2013 test crops when ../shared is there, else smooth random 48x48 images."""
    from PIL import Image

    files = sorted((SHARED / "fer2013" / "test").glob("*/*.jpg"))
    if len(files) >= count:
        picked = files[:: len(files) // count][:count]
        return np.stack([np.asarray(Image.open(f).convert("L")) for f in picked]), "FER2013 test crops"
    rng = np.random.default_rng(0)
    return np.stack([np.asarray(Image.fromarray(rng.uniform(0, 255, (6, 6)).astype(np.uint8)).resize(
        (48, 48), Image.Resampling.BICUBIC)) for _ in range(count)]), "generated 48x48 crops"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=config.PRETRAINED_MODEL,
                   help="a .keras model with its .tflite and .int8.tflite beside it")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for needed in (args.model.with_suffix(".tflite"), int8_path(args.model)):
        if not needed.is_file():
            sys.exit(f"error: {needed} is missing: run scripts/export_model.py --model {args.model} "
                     "--int8-data PREPROCESSED_DATA")
    x, source = crops(args.images)
    print(f"CPU: {cpu_description()}")
    print(f"model: {args.model}; {len(x)} {source}; median of {args.repeats} alternating rounds")
    for threads in sorted({1, cpu_count()}):
        for tta in (False, True):
            models = {"float": open_classifier(args.model, backend="litert", threads=threads, tta=tta),
                      "int8": open_classifier(args.model, backend="int8", threads=threads, tta=tta)}
            for clf in models.values():
                clf.predict(x[:8])  # allocation and first-run costs out of the timing
            times = {name: [] for name in models}
            for _ in range(args.repeats):
                for name, clf in models.items():
                    start = time.perf_counter()
                    clf.predict(x, batch_size=64)
                    times[name].append(time.perf_counter() - start)
            rate = {name: len(x) / statistics.median(t) for name, t in times.items()}
            view = "ten-crop" if tta else "one view"
            print(f"{threads} thread(s), {view:8s}: float {rate['float']:7.1f} faces/s, int8 {rate['int8']:7.1f} "
                  f"faces/s, int8/float {rate['int8'] / rate['float']:.2f}x")
    record = json.loads(args.model.with_suffix(".json").read_text()).get("litert_int8_export", {})
    if record:
        acc = record["accuracy"]
        print(f"accuracy as the export measured it ({record['evaluated_on']['images']} images of the "
              f"{record['evaluated_on']['split']} split; kept: {record['scheme']}):")
        for name, scores in acc.items():
            print(f"  {name:14s} one view {100 * scores['one_view']:.2f}%, ten-crop {100 * scores['ten_crop']:.2f}%")
    sizes = {n: f.stat().st_size / 2**20 for n, f in (("float", args.model.with_suffix(".tflite")),
                                                       ("int8", int8_path(args.model)))}
    print(f"file sizes: float {sizes['float']:.1f} MiB, int8 {sizes['int8']:.1f} MiB")


if __name__ == "__main__":
    main()
