"""Training throughput: the real input pipeline vs a bare model.fit, and bf16 vs float32.

In one run, on the same model (the from-scratch VGG16-BN at 48x48) and batch size:
  1. pipeline: model_training.make_dataset (uint8 arrays -> shuffle -> batch -> cast ->
     flip/rotate/zoom/shift/erase) feeding model.fit, exactly as training does;
  2. bare: model.fit on one in-memory float batch repeated (no input work at all);
  3. bare in float32, for the bf16/float32 speed ratio.
Images/s are timed between batch callbacks after warm-up steps (graph tracing excluded).

    python bench/train_throughput.py            # about 3 minutes on 2 cores
"""

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

import config  # noqa: E402


def timed_fit(model, dataset, steps: int, warmup: int, batch: int) -> float:
    """Images per second over `steps` batches after `warmup` batches."""
    import keras

    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            marks.append(time.perf_counter())

    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[Clock()], verbose=0)
    return steps * batch / (marks[-1] - marks[warmup - 1])


def fresh_model(precision: str, n_classes: int, size: int):
    import keras

    from emotion_model import build_model
    from model_training import compile_model

    keras.mixed_precision.set_global_policy(precision)
    model = build_model(n_classes, size, "none")
    compile_model(model, SimpleNamespace(optimizer="adam", label_smoothing=0.0, weight_decay=0.0), 1e-3)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--images", type=int, default=4096, help="synthetic training images in memory")
    args = p.parse_args()

    import tensorflow as tf

    from model_training import cpu_has_bf16, make_dataset

    size, n_classes, batch = config.IMAGE_SIZE, len(config.CLASS_NAMES), args.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, size, size, 1), dtype=np.uint8)
    y = rng.integers(0, n_classes, args.images)
    aug = SimpleNamespace(augment=True, aug_flip=True, aug_rotation=config.AUG_ROTATION_DEG,
                          aug_zoom=config.AUG_ZOOM, aug_shift=config.AUG_SHIFT, aug_erasing=config.AUG_ERASING)
    pipeline = make_dataset(x, y, batch, True, aug, 0, n_classes).repeat()
    bare = tf.data.Dataset.from_tensors(
        (tf.constant(x[:batch], tf.float32), tf.one_hot(y[:batch], n_classes))).repeat()

    precision = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    model = fresh_model(precision, n_classes, size)
    results = {}
    # Alternate the two measurements so drift in machine load hits both alike.
    for name, ds in (("bare", bare), ("pipeline", pipeline), ("bare", bare), ("pipeline", pipeline)):
        results.setdefault(name, []).append(timed_fit(model, ds, args.steps, args.warmup, batch))
    model32 = fresh_model("float32", n_classes, size)
    f32 = timed_fit(model32, bare, args.steps, args.warmup, batch)

    pipe, bare_ips = max(results["pipeline"]), max(results["bare"])
    print(f"model: VGG16-BN {size}x{size}, batch {batch}, {os.cpu_count()} CPU cores, precision {precision}")
    runs = {k: ", ".join(f"{v:.1f}" for v in vals) for k, vals in results.items()}
    print(f"pipeline (tf.data + augmentation) : {pipe:7.1f} img/s  (runs: {runs['pipeline']})")
    print(f"bare model.fit (in-memory tensors): {bare_ips:7.1f} img/s  (runs: {runs['bare']})")
    print(f"ratio pipeline/bare: {pipe / bare_ips:.2f}  (target >= 0.9)")
    print(f"bare float32: {f32:.1f} img/s; {precision}/float32 speed ratio: {bare_ips / f32:.2f}")


if __name__ == "__main__":
    main()
