"""Evaluate trained emotion models on the preprocessed arrays or on an image folder.

    models/<model>.keras (+ <model>.json) and preprocessed_data/X_<split>.npy, y_<split>.npy
      -> models/eval/<model-stem>-<split>/metrics.json         metrics, settings, model sha256
         models/eval/<model-stem>-<split>/confusion_matrix.png  counts and row-normalised
         models/eval/<model-stem>-<split>/mistakes.png          the most confident mistakes
         logs/eval/<model-stem>-<split>/                        TensorBoard: the same images + scalars

Several --model values are evaluated one after the other and compared in one table.
--tta also averages predictions over ten crops of each image (corners, centre, mirrored) and reports
the metrics with and without it. --images DIR evaluates an image folder DIR/<class>/*
directly, decoded exactly as preprocessing decodes it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import config
from artifacts import array_names, load_split, read_meta
from common import (HelpFormatter, UserError, atomic_write_bytes, atomic_write_json, format_table, import_tensorflow,
                    run_cli, sha256_file)
from emotion_model import default_model_path, load_model, model_info, sidecar_path
import tta

SPLIT_CHOICES = ("val", "test", "both")
IMAGES_SPLIT = "images"  # the "split" name of an --images evaluation (out folder <stem>-images)
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
MISTAKES_PNG = "mistakes.png"


EXAMPLES = """examples:
  evaluate_model.py                                  default model on the test arrays
  evaluate_model.py --split both --tta               val and test, with and without TTA
  evaluate_model.py --model models/best_model.keras models/fine_tuned_model.keras
                                                     compare two models in one table
  evaluate_model.py --images data/test               straight from an image folder
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Evaluate one or more trained models: accuracy, per-class precision/recall/F1,\n"
        "balanced accuracy and confusion matrix (printed, in metrics.json, as PNGs and in\n"
        "TensorBoard), optionally with test-time augmentation. Input is the preprocessed\n"
        "arrays (--data-dir) or an image folder (--images).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", type=Path, nargs="+", default=None, metavar="PATH",
                   help="model file(s) to evaluate; several give a comparison table (default: "
                   f"{config.FINE_TUNED_MODEL} in --models-dir if present, else {config.BEST_MODEL})")
    m.add_argument("--models-dir", type=Path, default=config.MODELS_DIR,
                   help="where the default model is looked up; results go under <models-dir>/"
                   f"{config.EVAL_DIR_NAME}/ unless --out-dir is given")
    d = p.add_argument_group("data (one of --data-dir or --images)")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, default=config.PREPROCESSED_DIR,
                     help="the preprocessed arrays folder (X_*.npy, y_*.npy, meta.json) written by "
                     "data_processing.py, as in model_training.py")
    src.add_argument("--images", type=Path, default=None, metavar="DIR",
                     help="evaluate an image-folder dataset DIR/<class>/<images> instead of the arrays "
                     "(e.g. data/test): folders are matched to the model's class names (case-"
                     "insensitive), unknown folders are skipped with a warning, unreadable files are "
                     "skipped and counted; decoding is the same as preprocessing")
    d.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                   help="which preprocessed split(s) to evaluate (default: test; not with --images)")
    o = p.add_argument_group("output")
    o.add_argument("--out-dir", type=Path, default=None,
                   help="results go to <out-dir>/<model-stem>-<split>/ (default: <models-dir>/"
                   f"{config.EVAL_DIR_NAME})")
    o.add_argument("--logs-dir", type=Path, default=config.LOGS_DIR,
                   help=f"TensorBoard images and scalars go to <logs-dir>/{config.EVAL_DIR_NAME}/"
                   "<model-stem>-<split>/ (previous evaluation events there are replaced)")
    o.add_argument("--mistakes", type=int, default=25, metavar="N",
                   help="how many of the most confident mistakes to show in mistakes.png (0: no file)")
    r = p.add_argument_group("inference")
    r.add_argument("--batch-size", type=int, default=config.EVAL_BATCH_SIZE, help="images per forward pass")
    r.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also average the predictions over ten crops (4 corners "
                   "and centre, each mirrored) and report both results side by side")
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes for --images")
    args = p.parse_args(argv)
    if args.images is not None and args.split is not None:
        p.error("--split selects preprocessed arrays; --images evaluates the whole folder")
    args.split = args.split or "test"
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.mistakes < 0:
        p.error("--mistakes must be 0 or more")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.out_dir is None:
        args.out_dir = args.models_dir / config.EVAL_DIR_NAME
    if args.model is None:
        args.model = [default_model_path(args.models_dir)]
    return args


# ---------------------------------------------------------------- data

@dataclass
class EvalData:
    """Images and labels to evaluate, with the class names of the labels."""
    split: str
    x: np.ndarray  # uint8 (N, S, S, 1)
    y: np.ndarray  # int64 (N,)
    class_names: list[str]
    info: dict = field(default_factory=dict)  # where the data came from, for metrics.json


def load_arrays(data_dir: Path, split: str) -> tuple[dict, list[EvalData]]:
    """The preprocessed split(s), verified against meta.json (UserError when anything is off)."""
    meta = read_meta(data_dir)
    splits = ("val", "test") if split == "both" else (split,)
    out = []
    for name in splits:
        s = load_split(data_dir, name, meta)
        if len(s.y) == 0:
            if len(splits) > 1:
                print(f"warning: the {name} split in {data_dir} has no images; skipped", file=sys.stderr)
                continue
            raise UserError(f"the {name} split in {data_dir} has no images "
                            "(re-run data_processing.py with a non-zero fraction for it)")
        x_name, y_name = array_names(name)
        out.append(EvalData(name, s.x, s.y, list(meta["class_names"]), {
            "source": "preprocessed arrays", "dir": str(Path(data_dir).resolve()), "split": name,
            "sha256": {x_name: meta["sha256"].get(x_name), y_name: meta["sha256"].get(y_name)},
            "created": meta.get("created"),
        }))
    if not out:
        raise UserError(f"no images in the {' and '.join(splits)} splits of {data_dir}")
    return meta, out


class ImageFolder:
    """An image-folder dataset DIR/<class>/*, decoded on demand at the sizes models need.

    Decoding reuses data_processing.decode_all (imaging.load_gray per file), so pixels are
    exactly those preprocessing would produce.
    """

    def __init__(self, root: Path, workers: int):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"image folder not found: {self.root} (--images expects DIR/<class>/<images>)")
        from data_processing import class_folders
        from imaging import list_files

        self.workers = workers
        self.folders = {name: list_files(self.root / name) for name in class_folders(self.root)}
        self.loose = [p for p in sorted(self.root.iterdir()) if p.is_file() and not p.name.startswith(".")]
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray, dict[int, str]]] = {}

    def mapping(self, class_names: list[str]) -> tuple[dict[str, int], list[str]]:
        """{folder: class index} of the folders named like a class, and the unknown folders."""
        index = {c.strip().lower(): i for i, c in enumerate(class_names)}
        known = {f: index[f.strip().lower()] for f in self.folders if f.strip().lower() in index}
        unknown = [f for f in self.folders if f not in known]
        if not known:
            hint = ""
            nested = [f for f in self.folders
                      if any(c.lower() in index for c in _subfolders(self.root / f))]
            if nested:
                hint = f"; did you mean --images {self.root / nested[0]}?"
            raise UserError(f"no folder in {self.root} is named like one of the model's classes "
                            f"{class_names} (found: {sorted(self.folders) or 'no folders'}){hint}")
        return known, unknown

    def paths(self) -> list[Path]:
        return [p for name in sorted(self.folders) for p in self.folders[name]]

    def decode(self, size: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Every file of every folder at `size`: (pixels (N,S,S) of all files, ok mask, reasons)."""
        if size not in self._decoded:
            from data_processing import decode_all

            # Forking a pool once TensorFlow runs threads risks deadlocks: decode in-process then.
            workers = 1 if "tensorflow" in sys.modules else self.workers
            paths = self.paths()
            pixels, ok, reasons = decode_all(paths, size, workers, f"decoding {self.root.name}")
            full = np.zeros((len(paths), size, size), dtype=np.uint8)
            full[ok] = pixels
            self._decoded[size] = (full, ok, reasons)
        return self._decoded[size]

    def for_model(self, class_names: list[str], size: int) -> EvalData:
        known, unknown = self.mapping(class_names)
        pixels, ok, reasons = self.decode(size)
        paths = self.paths()
        folder_of = [name for name in sorted(self.folders) for _ in self.folders[name]]
        labels = np.array([known.get(f, -1) for f in folder_of], dtype=np.int64)
        use = ok & (labels >= 0)
        skipped = {f: len(self.folders[f]) for f in unknown}
        if skipped:
            print(f"warning: {len(skipped)} folder(s) in {self.root} match no class of the model "
                  f"{class_names} and are skipped: " + ", ".join(f"{f}/ ({n} files)" for f, n in skipped.items()),
                  file=sys.stderr)
        if self.loose:
            print(f"warning: {len(self.loose)} file(s) directly in {self.root} (not in a class folder) "
                  "are skipped", file=sys.stderr)
        bad = [{"path": str(paths[i]), "reason": r} for i, r in sorted(reasons.items()) if labels[i] >= 0]
        if bad:
            print(f"warning: {len(bad)} unreadable file(s) skipped:", file=sys.stderr)
            for b in bad[:10]:
                print(f"  {b['path']}: {b['reason']}", file=sys.stderr)
            if len(bad) > 10:
                print(f"  ... {len(bad) - 10} more in {METRICS_FILE}", file=sys.stderr)
        if not use.any():
            raise UserError(f"no readable images in the class folders of {self.root}")
        missing = [c for i, c in enumerate(class_names) if i not in known.values()]
        if missing:
            print(f"warning: no folder in {self.root} for the classes {missing}: their support is 0",
                  file=sys.stderr)
        return EvalData(IMAGES_SPLIT, pixels[use][..., None], labels[use], list(class_names), {
            "source": "image folder", "dir": str(self.root.resolve()),
            "folders": {f: class_names[i] for f, i in sorted(known.items())},
            "classes_without_folder": missing,
            "skipped_folders": skipped,
            "skipped_loose_files": [str(p) for p in self.loose],
            "bad_files": bad,
            "paths": [str(p) for p, u in zip(paths, use) if u],
        })


def _subfolders(folder: Path) -> list[str]:
    try:
        return [d.name for d in folder.iterdir() if d.is_dir()]
    except OSError:
        return []


# ---------------------------------------------------------------- model checks

def model_classes(path: Path, n_outputs: int, data_classes: list[str] | None) -> tuple[list[str], str | None]:
    """The class names of a model's outputs, from its sidecar; without one, the data's classes
    (when the counts agree) or FER2013's 7. Returns (names, warning or None)."""
    if sidecar_path(path).is_file():
        info = model_info(path, n_outputs)
        if "sidecar" not in info:  # a readable sidecar, not model_info's FER2013 fallback
            return list(info["class_names"]), None
    if data_classes is not None and len(data_classes) == n_outputs:
        return list(data_classes), (f"{sidecar_path(path)} is missing or unreadable: assuming the model's "
                                    f"{n_outputs} outputs are the data's classes in order")
    info = model_info(path, n_outputs)  # FER2013's classes for 7 outputs, else UserError
    return list(info["class_names"]), info.get("sidecar")


def output_count(model, path: Path) -> int:
    shape = model.output_shape
    if isinstance(shape, list) or len(shape) != 2 or not isinstance(shape[1], int):
        raise UserError(f"{path} has output shape {shape}; expected one softmax over the classes (None, K)")
    return shape[1]


def input_size(model, path: Path) -> int:
    """S of a model taking (S, S, 1) grayscale images; UserError for any other input."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[3] != 1 or shape[1] != shape[2] \
            or not isinstance(shape[1], int):
        raise UserError(f"{path} takes input {shape}; expected square grayscale images (None, S, S, 1) "
                        "as the models of model_training.py take")
    return shape[1]


def check_count(path: Path, n_out: int, classes: list[str], where: str) -> None:
    if n_out != len(classes):
        raise UserError(f"{path} has {n_out} outputs but {where} has {len(classes)} classes {classes}: "
                        "the model was trained on other data; evaluate it on matching data, or pass the "
                        "matching --model")


def check_model(model, path: Path, data: EvalData, model_names: list[str], where: str) -> None:
    """Refuse a model whose outputs or input size do not fit the data."""
    classes = data.class_names
    check_count(path, output_count(model, path), classes, where)
    if list(model_names) != list(classes):
        raise UserError(f"{path} was trained on classes {list(model_names)} (its {sidecar_path(path).name}) "
                        f"but {where} has classes {classes}: the labels would not match")
    shape = tuple(model.input_shape[1:])
    size = data.x.shape[1]
    if shape != (size, size, 1):
        raise UserError(f"{path} takes input {shape} but {where} has {size}x{size} grayscale images: "
                        f"re-run data_processing.py with --image-size {shape[0]}")


# ---------------------------------------------------------------- inference

def make_predictor(model, size: int, use_tta: bool, batch_size: int = config.EVAL_BATCH_SIZE):
    """A function uint8 batch -> (probabilities, ten-crop TTA probabilities or None).

    One tf.function per model (traced once, for any batch length), reused across splits.
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 1], tf.uint8)])
    def plain(batch):
        return model(tf.cast(batch, tf.float32), training=False)

    def chunked(x):
        return np.concatenate([plain(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)])

    if use_tta:
        return lambda b: (plain(b).numpy(), tta.predict_averaged(chunked, b))
    return lambda b: (plain(b).numpy(), None)


def predict(run, x: np.ndarray, batch_size: int, use_tta: bool,
            desc: str) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Batched inference through `run` (make_predictor) with a progress bar;
    returns (probs, TTA probs or None, seconds)."""
    from tqdm import tqdm

    probs, tta_probs = [], []
    started = time.perf_counter()
    with tqdm(total=len(x), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=None, mininterval=0.5) as bar:
        for start in range(0, len(x), batch_size):
            batch = np.ascontiguousarray(x[start:start + batch_size])
            p, t = run(batch)
            probs.append(p)
            if t is not None:
                tta_probs.append(t)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    probs_arr = _as_probabilities(np.concatenate(probs).astype(np.float64))
    tta_arr = _as_probabilities(np.concatenate(tta_probs).astype(np.float64)) if use_tta else None
    return probs_arr, tta_arr, seconds


def _as_probabilities(out: np.ndarray) -> np.ndarray:
    """Models end in softmax; should one output logits, turn them into probabilities."""
    if out.size and ((out < -1e-6).any() or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3)):
        print("warning: the model's outputs are not probabilities (no softmax?); applying softmax",
              file=sys.stderr)
        out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)
    return out


# ---------------------------------------------------------------- metrics

def compute_metrics(y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                                 confusion_matrix)

    labels = list(range(len(class_names)))
    pred = probs.argmax(axis=1)
    report = classification_report(y, pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": balanced accuracy averages over the
        # classes present in the data, which is what we want.
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(y, pred)
    top2 = np.argsort(-probs, axis=1)[:, :2]
    return {
        "n_images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "top2_accuracy": float((top2 == y[:, None]).any(axis=1).mean()) if len(class_names) > 2 else None,
        "per_class": {c: report[c] for c in class_names},
        "macro_avg": report["macro avg"],
        "weighted_avg": report["weighted avg"],
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, in class_names order",
        "class_names": list(class_names),
    }


def most_confident_mistakes(y: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="stable")
    return wrong[order[:n]]


# ---------------------------------------------------------------- plots

def _figure(**kwargs):
    # A bare Figure (no pyplot): no global state, no GUI backend, renders with Agg.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def plot_confusion(cm: np.ndarray, class_names: list[str], title: str) -> bytes:
    """Two panels: counts and row-normalised (recall on the diagonal)."""
    cm = np.asarray(cm)
    n = len(class_names)
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    cell = 0.62 if n <= 10 else 0.42
    side = max(3.0, 1.3 + cell * n)
    fontsize = 10 if n <= 7 else 8 if n <= 12 else 6
    fig = _figure(figsize=(2 * side + 1.6, side + 0.9), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = ((axes[0], cm, max(int(cm.max()), 1), "counts\n"),
              (axes[1], norm, 1.0, "normalised by true class\n(each row sums to 1)"))
    for ax, data, vmax, name in panels:
        image = ax.imshow(data, cmap="Blues", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=11)
        ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), labels=class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(n):
            for j in range(n):
                if data is norm:
                    text = f"{norm[i, j]:.2f}" if support[i, 0] else "–"
                else:
                    text = str(int(cm[i, j]))
                dark = data[i, j] > 0.55 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=12)
    return _png(fig)


def plot_mistakes(x: np.ndarray, y: np.ndarray, probs: np.ndarray, idx: np.ndarray,
                  class_names: list[str], title: str) -> bytes:
    """A grid of images with true class, predicted class and confidence."""
    n = len(idx)
    if n == 0:
        fig = _figure(figsize=(4, 1.2))
        fig.text(0.5, 0.5, f"{title}\nno mistakes", ha="center", va="center", fontsize=11)
        return _png(fig)
    cols = min(n, max(1, math.ceil(math.sqrt(n))), 8)
    rows = math.ceil(n / cols)
    fig = _figure(figsize=(1.75 * cols, 2.05 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    pred = probs.argmax(axis=1)
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, idx):
        ax.imshow(x[i, ..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"true: {class_names[y[i]]}\npred: {class_names[pred[i]]} {probs[i, pred[i]]:.2f}",
                     fontsize=9, color="firebrick")
    fig.suptitle(title, fontsize=11)
    return _png(fig)


# ---------------------------------------------------------------- outputs

def write_tensorboard(log_dir: Path, images: dict[str, bytes], scalars: dict[str, float]) -> None:
    """PNG images and scalars at step 0; older evaluation events in this folder are replaced."""
    import tensorflow as tf

    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink(missing_ok=True)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for name, png in images.items():
            tf.summary.image(name, tf.image.decode_png(png, channels=4)[None], step=0)
        for name, value in scalars.items():
            if value is not None:
                tf.summary.scalar(name, value, step=0)
    writer.flush()
    writer.close()


def print_report(metrics: dict, tta_metrics: dict | None, tta_desc: str | None) -> None:
    names = metrics["class_names"]
    rows = [[c, r["precision"], r["recall"], r["f1-score"], int(r["support"])]
            for c, r in metrics["per_class"].items()]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        r = metrics[key]
        rows.append([label, r["precision"], r["recall"], r["f1-score"], int(r["support"])])
    print()
    print(format_table(["class", "precision", "recall", "f1", "support"], rows))
    summary = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"),
               ("macro F1", "macro_f1"), ("weighted F1", "weighted_f1"), ("top-2 accuracy", "top2_accuracy")]
    header = ["metric", "plain"] + (["TTA", "change"] if tta_metrics else [])
    table = []
    for label, key in summary:
        if metrics[key] is None:
            continue
        row = [label, metrics[key]]
        if tta_metrics:
            row += [tta_metrics[key], f"{100 * (tta_metrics[key] - metrics[key]):+.2f} pts"]
        table.append(row)
    print()
    print(format_table(header, table))
    if tta_desc:
        print(f"TTA: {tta_desc}")
    print("\nconfusion matrix (rows: true, columns: predicted)")
    cm = metrics["confusion_matrix"]
    print(format_table(["true \\ pred"] + names, [[c] + row for c, row in zip(names, cm)]))


def unique_tags(paths: list[Path]) -> list[str]:
    """Model stems, made unique (best_model, best_model-2, ...) for output folder names."""
    tags, seen = [], {}
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        tags.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return tags


def library_versions() -> dict:
    import keras
    import sklearn
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def evaluate_one(run, model_path: Path, model_sha: str, model_side: dict, tag: str, data: EvalData,
                 args, warnings_: list[str]) -> dict:
    """Predict, compute metrics, write metrics.json, the PNGs and TensorBoard; returns a summary row."""
    run_tag = f"{tag}-{data.split}"
    out_dir = args.out_dir / run_tag
    print(f"\n== {model_path.name} on {data.split}: {len(data.y)} images, {len(data.class_names)} classes ==",
          flush=True)
    probs, tta_probs, seconds = predict(run, data.x, args.batch_size, args.tta,
                                        f"predicting {data.split}" + (" (TTA)" if args.tta else ""))
    print(f"predicted {len(data.y)} images in {seconds:.1f} s ({1000 * seconds / max(len(data.y), 1):.2f} ms/img"
          + (f", {tta.VIEWS} views each" if args.tta else "") + ")")
    metrics = compute_metrics(data.y, probs, data.class_names)
    tta_metrics = compute_metrics(data.y, tta_probs, data.class_names) if tta_probs is not None else None
    size = data.x.shape[1]
    tta_desc = tta.description(size) if args.tta else None
    print_report(metrics, tta_metrics, tta_desc)

    title = f"{model_path.name} on {data.split} ({len(data.y)} images): accuracy {metrics['accuracy']:.3f}"
    images = {"confusion_matrix": plot_confusion(np.array(metrics["confusion_matrix"]), data.class_names, title)}
    mistakes = most_confident_mistakes(data.y, probs, args.mistakes)
    if args.mistakes:
        images["mistakes"] = plot_mistakes(data.x, data.y, probs, mistakes, data.class_names,
                                           f"most confident mistakes: {model_path.name} on {data.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Until the new metrics.json is written, the folder is visibly incomplete (no stale one).
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    files = {"confusion_matrix": out_dir / CONFUSION_PNG, "mistakes": out_dir / MISTAKES_PNG}
    for name, png in images.items():
        atomic_write_bytes(files[name], lambda f, png=png: f.write(png))
    if not args.mistakes:
        files["mistakes"].unlink(missing_ok=True)
    log_dir = args.logs_dir / config.EVAL_DIR_NAME / run_tag
    scalars = {f"eval/{k}": metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")}
    if tta_metrics:
        scalars.update({f"eval_tta/{k}": tta_metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    write_tensorboard(log_dir, images, scalars)

    pred = probs.argmax(axis=1)
    paths = data.info.get("paths")
    data_info = {k: v for k, v in data.info.items() if k != "paths"}
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "path": str(model_path.resolve()), "sha256": model_sha,
            "sidecar": str(sidecar_path(model_path)) if sidecar_path(model_path).is_file() else None,
            "class_names": model_side.get("class_names"),
            "trained": {k: model_side.get(k) for k in ("created", "run_name", "phase", "best_val_accuracy",
                                                        "best_epoch") if k in model_side},
        },
        "data": {**data_info, "n_images": int(len(data.y)), "image_size": int(size),
                 "class_names": data.class_names},
        "settings": {
            "split": data.split, "batch_size": args.batch_size, "tta": args.tta, "tta_views": tta_desc,
            "out_dir": str(out_dir.resolve()), "tensorboard_dir": str(log_dir.resolve()),
            "mistakes_shown": int(len(mistakes)) if args.mistakes else 0,
            "args": {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
        },
        "metrics": metrics,
        "tta": tta_metrics,
        "most_confident_mistakes": [
            {"index": int(i), **({"path": paths[i]} if paths else {}), "true": data.class_names[data.y[i]],
             "predicted": data.class_names[pred[i]], "confidence": float(probs[i, pred[i]])}
            for i in mistakes
        ],
        "timing": {"predict_seconds": round(seconds, 3),
                   "ms_per_image": round(1000 * seconds / max(len(data.y), 1), 3)},
        "warnings": warnings_,
        "versions": library_versions(),
    }
    atomic_write_json(out_dir / METRICS_FILE, result)  # last: its presence means the folder is complete
    shown = [files["confusion_matrix"]] + ([files["mistakes"]] if args.mistakes else [])
    print(f"\nwrote {out_dir / METRICS_FILE}, " + ", ".join(p.name for p in shown) + f"; TensorBoard: {log_dir}")
    return {"model": str(model_path), "tag": tag, "split": data.split, "images": int(len(data.y)),
            "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
            "macro_f1": metrics["macro_f1"],
            **({"tta_accuracy": tta_metrics["accuracy"], "tta_macro_f1": tta_metrics["macro_f1"]}
               if tta_metrics else {}),
            "metrics_file": str(out_dir / METRICS_FILE)}


def print_comparison(rows: list[dict], tta: bool, out_dir: Path) -> None:
    names = [Path(r["model"]).name for r in rows]
    duplicate = len({r["model"] for r in rows}) != len(set(names))
    header = ["model", "split", "images", "accuracy", "balanced acc", "macro F1"]
    if tta:
        header += ["TTA acc", "TTA macro F1"]
    table = []
    for r, name in zip(rows, names):
        row = [r["model"] if duplicate else name, r["split"], r["images"], r["accuracy"],
               r["balanced_accuracy"], r["macro_f1"]]
        if tta:
            row += [r["tta_accuracy"], r["tta_macro_f1"]]
        table.append(row)
    print("\n== comparison ==")
    print(format_table(header, table))
    atomic_write_json(out_dir / "comparison.json", {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": rows})
    print(f"wrote {out_dir / 'comparison.json'}")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    model_paths = [p.expanduser() for p in args.model]
    for p in model_paths:  # before the slow TensorFlow import
        if not p.is_file():
            raise UserError(f"model not found: {p} (train one with scripts/model_training.py, "
                            "or pass --model PATH)")

    # Data first (and, for --images, decoded before TensorFlow starts its threads).
    folder = None
    if args.images is not None:
        folder = ImageFolder(args.images, args.workers)
        for p in model_paths:
            info = model_info(p)
            folder.mapping(list(info["class_names"]))  # fail early when no folder matches
            folder.decode(int(info["image_size"]))
        where = f"the image folder {folder.root}"
        datasets = meta = None
    else:
        meta, datasets = load_arrays(args.data_dir, args.split)
        where = f"the arrays in {args.data_dir}"

    import_tensorflow()  # after the checks above: errors stay fast

    # Load and check every model before evaluating any: a misfit one fails the run up front.
    prepared = []
    for path, tag in zip(model_paths, unique_tags(model_paths)):
        model = load_model(path)
        n_out = output_count(model, path)
        size = input_size(model, path)
        notes = []
        if folder is None:
            check_count(path, n_out, meta["class_names"], where)
        names, note = model_classes(path, n_out, None if folder else meta["class_names"])
        if note:
            print(f"warning: {note}", file=sys.stderr)
            notes.append(note)
        if folder is not None:
            folder.mapping(names)
            if n_out != len(names):
                raise UserError(f"{path} has {n_out} outputs but its {sidecar_path(path).name} lists "
                                f"{len(names)} classes {names}")
            data_list = None  # decoded per model below (the folder mapping depends on its classes)
        else:
            data_list = datasets
            for data in data_list:
                check_model(model, path, data, names, where)
        prepared.append((path, tag, model, n_out, size, names, notes, data_list))

    rows = []
    for path, tag, model, n_out, size, names, notes, data_list in prepared:
        if data_list is None:
            data_list = [folder.for_model(names, size)]
            notes = notes + [f"unknown folder skipped: {f}" for f in data_list[0].info["skipped_folders"]]
            check_model(model, path, data_list[0], names, where)
        side = model_info(path) if sidecar_path(path).is_file() else {}
        sha = sha256_file(path)
        print(f"\nmodel {path} (sha256 {sha[:12]}...): {n_out} outputs, input {model.input_shape[1:]}")
        run = make_predictor(model, size, args.tta, args.batch_size)
        for data in data_list:
            rows.append(evaluate_one(run, path, sha, side, tag, data, args, notes))
    if len(rows) > 1:
        print_comparison(rows, args.tta, args.out_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
