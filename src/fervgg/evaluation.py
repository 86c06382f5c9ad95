"""The pieces of evaluating a model on labelled images: the preprocessed splits, does the
model fit the data, predictions (with optional ten-crop TTA), metrics and the most
confident mistakes. Used by evaluate.py and bench/peer_accuracy.py.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from fervgg import tta
from fervgg.artifacts import Split, array_names, load_split, read_meta
from fervgg.classifiers import print_note
from fervgg.common import FervggError
from fervgg.emotion_model import sidecar_path


def load_arrays(data_dir: Path, split: str, notes=None) -> tuple[dict, list[Split]]:
    """The preprocessed split(s), verified against meta.json (FervggError when anything is off);
    `notes` (default: stderr) hears of an empty split that is skipped."""
    meta = read_meta(data_dir)
    splits = ("val", "test") if split == "both" else (split,)
    out = []
    for name in splits:
        s = load_split(data_dir, name, meta)
        if len(s.y) == 0:
            if len(splits) > 1:
                (notes or print_note)(f"warning: the {name} split in {data_dir} has no images; skipped")
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

def check_fit(classifier, data: Split, where: str) -> None:
    """Refuse a model (classifiers.Classifier) whose outputs or input size do not fit the data."""
    path, classes = classifier.path, data.class_names
    if classifier.num_outputs != len(classes):
        raise FervggError(f"{path} has {classifier.num_outputs} outputs but {where} has {len(classes)} classes "
                          f"{classes}: the model was trained on other data; evaluate it on matching data, or pass "
                          "the matching `model`")
    if list(classifier.class_names) != list(classes):
        raise FervggError(f"{path} was trained on classes {list(classifier.class_names)} (its "
                          f"{sidecar_path(path).name}) but {where} has classes {classes}: the labels would not match")
    size, side = data.x.shape[1], classifier.image_size
    if side != size:
        raise FervggError(f"{path} takes input ({side}, {side}, 1) but {where} has {size}x{size} grayscale images: "
                          f"re-run data_processing.py with `image_size` {side}")


# ---------------------------------------------------------------- inference

def predict(classifier, x: np.ndarray, batch_size: int, use_tta: bool, desc: str,
            notes=None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Batched inference through a classifiers.Classifier with a progress bar; returns
    (probs, ten-crop TTA probs or None, seconds)."""
    from tqdm import tqdm

    ten_crop = tta.TenCrop(classifier) if use_tta else None
    probs, tta_probs = [], []
    started = time.perf_counter()
    with tqdm(total=len(x), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=None, mininterval=0.5) as bar:
        for start in range(0, len(x), batch_size):
            batch = np.ascontiguousarray(x[start:start + batch_size])
            probs.append(classifier.predict(batch, batch_size))
            if ten_crop is not None:
                tta_probs.append(ten_crop.predict(batch, batch_size))
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    probs_arr = _as_probabilities(np.concatenate(probs).astype(np.float64), notes)
    tta_arr = _as_probabilities(np.concatenate(tta_probs).astype(np.float64), notes) if use_tta else None
    return probs_arr, tta_arr, seconds


def _as_probabilities(out: np.ndarray, notes=None) -> np.ndarray:
    """Models end in softmax; should one output logits, turn them into probabilities."""
    if out.size and ((out < -1e-6).any() or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3)):
        (notes or print_note)("warning: the model's outputs are not probabilities (no softmax?); applying softmax")
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
