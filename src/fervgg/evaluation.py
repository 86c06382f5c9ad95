"""Evaluating a model on labelled images: does the model fit the data, predictions (with
optional ten-crop TTA), metrics and the most confident mistakes. Used by
evaluate_model.py and bench/peer_accuracy.py.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg import tta
from fervgg.artifacts import Split, array_names, load_split, read_meta
from fervgg.common import FervggError, check_gray_input
from fervgg.emotion_model import model_info, sidecar_path


def load_arrays(data_dir: Path, split: str) -> tuple[dict, list[Split]]:
    """The preprocessed split(s), verified against meta.json (FervggError when anything is off)."""
    meta = read_meta(data_dir)
    splits = ("val", "test") if split == "both" else (split,)
    out = []
    for name in splits:
        s = load_split(data_dir, name, meta)
        if len(s.y) == 0:
            if len(splits) > 1:
                print(f"warning: the {name} split in {data_dir} has no images; skipped", file=sys.stderr)
                continue
            raise FervggError(f"the {name} split in {data_dir} has no images "
                            "(re-run data_processing.py with a non-zero fraction for it)")
        x_name, y_name = array_names(name)
        out.append(Split(name, s.x, s.y, list(meta["class_names"]), {
            "source": "preprocessed arrays", "dir": str(Path(data_dir).resolve()), "split": name,
            "sha256": {x_name: meta["sha256"].get(x_name), y_name: meta["sha256"].get(y_name)},
            "created": meta.get("created"),
        }))
    if not out:
        raise FervggError(f"no images in the {' and '.join(splits)} splits of {data_dir}")
    return meta, out


# ---------------------------------------------------------------- model checks

def model_classes(path: Path, n_outputs: int, data_classes: list[str] | None) -> tuple[list[str], str | None]:
    """The class names of a model's outputs, from its sidecar; without one, the data's classes
    (when the counts agree) or FER2013's 7. Returns (names, warning or None)."""
    if sidecar_path(path).is_file():
        return model_info(path, n_outputs).class_names, None
    if data_classes is not None and len(data_classes) == n_outputs:
        return list(data_classes), (f"{sidecar_path(path)} is missing: assuming the model's "
                                    f"{n_outputs} outputs are the data's classes in order")
    info = model_info(path, n_outputs)  # FER2013's classes for 7 outputs, else FervggError
    return info.class_names, info.assumed


def output_count(model, path: Path) -> int:
    shape = model.output_shape
    if isinstance(shape, list) or len(shape) != 2 or not isinstance(shape[1], int):
        raise FervggError(f"{path} has output shape {shape}; expected one softmax over the classes (None, K)")
    return shape[1]


def input_size(model, path: Path) -> int:
    """S of a model taking (S, S, 1) grayscale images; FervggError for any other input."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise FervggError(f"{path} has several inputs {shape}; expected one (None, S, S, 1)")
    return check_gray_input(shape, path)


def check_count(path: Path, n_out: int, classes: list[str], where: str) -> None:
    if n_out != len(classes):
        raise FervggError(f"{path} has {n_out} outputs but {where} has {len(classes)} classes {classes}: "
                        "the model was trained on other data; evaluate it on matching data, or pass the "
                        "matching --model")


def check_model(model, path: Path, data: Split, model_names: list[str], where: str) -> None:
    """Refuse a model whose outputs or input size do not fit the data."""
    classes = data.class_names
    check_count(path, output_count(model, path), classes, where)
    if list(model_names) != list(classes):
        raise FervggError(f"{path} was trained on classes {list(model_names)} (its {sidecar_path(path).name}) "
                        f"but {where} has classes {classes}: the labels would not match")
    shape = tuple(model.input_shape[1:])
    size = data.x.shape[1]
    if shape != (size, size, 1):
        raise FervggError(f"{path} takes input {shape} but {where} has {size}x{size} grayscale images: "
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
                                 confusion_matrix, top_k_accuracy_score)

    labels = list(range(len(class_names)))
    pred = probs.argmax(axis=1)
    report = classification_report(y, pred, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": balanced accuracy averages over the
        # classes present in the data, which is what we want.
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(y, pred)
    return {
        "n_images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "top2_accuracy": (float(top_k_accuracy_score(y, probs, k=2, labels=labels))
                          if len(class_names) > 2 else None),
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
