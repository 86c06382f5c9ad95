"""Here (TensorFlow backend): a candidate returned by the GPU run -> a .keras model of ours with its
sidecar, ready for publish.sh.

    python import_candidate.py RETURNED_DIR INDEX OUT.keras [DATA_DIR]

RETURNED_DIR holds summary.json and c<INDEX>-<run>-<candidate>.part<j> (collect.py). The weights
are float16 in fervgg.emotion_model.build_model's weight order; the layout recorded on the GPU
(variable paths and shapes) must match the model built here.
"""

import json
import sys
from pathlib import Path

import numpy as np

from fervgg import emotion_model
from fervgg.artifacts import read_meta
from fervgg.common import atomic_save_keras, atomic_write_json, library_versions, utc_now



def main(returned: Path, index: int, out: Path, data: Path):
    summary = json.loads((returned / "summary.json").read_text())
    entry = summary["returned"][index]
    run, name = entry["run"], entry["candidate"]
    record = summary["records"][run]
    args = record["args"]
    blob = b"".join((returned / f"c{index}-{run}-{name}.part{j}").read_bytes() for j in range(entry["parts"]))
    if len(blob) != entry["bytes"]:
        raise SystemExit(f"{len(blob)} bytes, expected {entry['bytes']}")
    # The weight layout does not show a dropped max-pool: the run's own argument does.
    pooled = tuple(int(b) for b in args.get("pooled_blocks", "12345"))
    model = emotion_model.build_model(7, 48, "none", 256, args["dropout"], args["crop"], pooled)
    layout = [[w.path, list(w.shape)] for w in model.weights]
    if layout != record["weights_layout"]:
        raise SystemExit("the model built here does not have the GPU run's weight layout")
    weights, at = [], 0
    for w in model.weights:
        n = int(np.prod(w.shape))
        weights.append(np.frombuffer(blob, np.float16, n, at).reshape(w.shape).astype(np.float32))
        at += 2 * n
    if at != len(blob):
        raise SystemExit("weights left over: layout mismatch")
    model.set_weights(weights)
    atomic_save_keras(model, out)
    meta = read_meta(data)
    cand = record["candidates"].get(name, {})
    epochs = record["epochs"]
    info = {
        "format_version": emotion_model.SIDECAR_VERSION,
        "model": out.name,
        "created": utc_now(),
        "class_names": meta["class_names"],
        "image_size": meta["image_size"],
        "input": f"raw grayscale pixels 0-255, shape (N, {meta['image_size']}, {meta['image_size']}, 1)",
        "crop_size": args["crop"],
        "phase": 1,
        "best_val_accuracy": cand.get("val_accuracy"),
        "best_epoch": len(epochs),
        "training_seconds": record.get("train_seconds"),
        "run_name": f"v5-gpu-{run}",
        "hardware": f"GPU: {', '.join(record['devices'])} (JAX {record['versions']['jax']}), "
                    f"host {record['cpu']}, precision {args['precision']}",
        "config": {"trainer": "gpu_train.py (Keras 3 JAX backend)", **args,
                   "weights": "none", "dense_units": 256, "optimizer": "sgd (nesterov, momentum 0.9)",
                   "lr_schedule": "linear warm-up, then cosine timed to the deadline (per epoch)",
                   "aug_flip": True, "aug_rotation": 10.0, "aug_zoom": 0.1, "aug_shift": 0.0,
                   "crop_size": args["crop"], "aug_erasing": args["erasing"]},
        "data": {"dir": str(data), "sha256": meta["sha256"], "counts": meta["counts"]},
        "versions": {**library_versions("tensorflow", "keras", "numpy"), "trained_with": record["versions"]},
        "gpu_run": {"candidate": name, "epochs_run": len(epochs), "planned_epochs": record.get("planned_epochs"),
                    "mean_of_epochs_from": record.get("swa_from_epoch") if name == "swa" else None,
                    "val_accuracy": cand.get("val_accuracy"),
                    "val_accuracy_ten_crop": cand.get("val_accuracy_ten_crop"),
                    "weights_returned": "float16"},
    }
    atomic_write_json(emotion_model.sidecar_path(out), info)
    print(f"{out}: {run}/{name}, val {cand.get('val_accuracy')}, ten-crop {cand.get('val_accuracy_ten_crop')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]),
         Path(sys.argv[4] if len(sys.argv) > 4 else "/work/runs/v4/fer-data"))
