"""The pictures and tables of an evaluation: confusion matrix and mistakes as PNG,
TensorBoard images and scalars, the printed report."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from fervgg.common import format_table


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
