"""Prediction speed: the LiteRT path vs the Keras path of scripts/predict_emotion.py.

1. Cold start: wall time of a fresh `predict_emotion.py` process predicting one image
   (a photo with face detection if ../shared/photos is there, else a 48x48 crop with
   --no-detect), median of --repeats runs per backend, and their ratio (target: LiteRT
   at least 3x faster).
2. Throughput: one process predicting a folder of --images 48x48 face crops with
   --no-detect (FER2013 test crops if ../shared/fer2013 is there, else generated ones);
   images/s over the whole command, start-up included.

Without --model it builds an untrained model of the real architecture (VGG16 layout,
48x48, 7 classes) and exports it, in a temporary folder: speed does not depend on the
weights.

    python bench/predict_latency.py
    python bench/predict_latency.py --model models/best_model.keras   # needs its .tflite
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fervgg.common import cpu_count

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "predict_emotion.py"
SHARED = ROOT.parent / "shared"


def build_model(folder: Path) -> Path:
    """An untrained 48x48 model + sidecar + .tflite, built in a subprocess-free way."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fervgg import config
    from fervgg import emotion_model
    from fervgg.common import atomic_write_json

    path = folder / config.BEST_MODEL
    model = emotion_model.build_model(len(config.CLASS_NAMES), 48, "none")
    model.save(path)
    atomic_write_json(path.with_suffix(".json"), {"class_names": list(config.CLASS_NAMES), "image_size": 48})
    subprocess.run([sys.executable, str(ROOT / "scripts" / "export_model.py"), "--model", str(path),
                    "--check-samples", "2"], check=True, stdout=subprocess.DEVNULL)
    return path


def make_crops(folder: Path, count: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fer = sorted((SHARED / "fer2013" / "test").glob("*/*.jpg"))
    if len(fer) >= count:
        for i, src in enumerate(fer[:: max(1, len(fer) // count)][:count]):
            shutil.copyfile(src, folder / f"{i:04d}.jpg")
        return "FER2013 test crops"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.uniform(0, 255, (6, 6)).astype(np.uint8)
        Image.fromarray(coarse).resize((48, 48), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
    return "generated 48x48 crops"


def run_cli(args: list[str]) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: predict_emotion.py {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="a .keras model with an up-to-date .tflite beside it")
    p.add_argument("--repeats", type=int, default=3, help="cold runs per backend (median reported)")
    p.add_argument("--images", type=int, default=1000, help="48x48 crops for the throughput run")
    p.add_argument("--image", type=Path, default=None, help="the image for the cold-start run")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        if args.model:
            model = args.model
            if not model.with_suffix(".tflite").is_file():
                sys.exit(f"error: {model.with_suffix('.tflite')} is missing: "
                         f"run scripts/export_model.py --model {model}")
        else:
            print("building and exporting an untrained 48x48 model ...", flush=True)
            model = build_model(tmp)
        photo = args.image or SHARED / "photos" / "obama.jpg"
        if photo.is_file():
            one, what = [str(photo)], f"{photo.name} with face detection (default detector)"
        else:
            make_crops(tmp / "one", 1)
            one, what = [str(next((tmp / "one").iterdir())), "--no-detect"], "one 48x48 crop, --no-detect"
        crops = tmp / "crops"
        source = make_crops(crops, args.images)
        for path in crops.iterdir():  # warm the page cache for both backends alike
            path.read_bytes()

        print(f"machine: {cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")
        print(f"cold start, one image ({what}), median of {args.repeats} fresh processes:")
        cold = {}
        for backend in ("litert", "keras"):
            runs = [run_cli(["--model", str(model), "--backend", backend, "--image_path", *one])
                    for _ in range(args.repeats)]
            cold[backend] = statistics.median(runs)
            print(f"  {backend:6s} {cold[backend]:6.2f} s   (runs: {', '.join(f'{r:.2f}' for r in runs)})")
        ratio = cold["keras"] / cold["litert"]
        print(f"  keras/litert ratio: {ratio:.1f}x  (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")

        print(f"throughput, {args.images} {source} in one folder, --no-detect, whole command:")
        for backend in ("litert", "keras"):
            seconds = run_cli(["--model", str(model), "--backend", backend, "--no-detect", "--csv",
                               "--image_path", str(crops)])
            print(f"  {backend:6s} {seconds:6.2f} s   {args.images / seconds:7.0f} images/s")


if __name__ == "__main__":
    main()
