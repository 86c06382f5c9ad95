"""Training throughput: the real input pipeline vs a bare model.fit, bf16 vs float32,
and TensorFlow's oneDNN on vs off.

In one run, on the same model (the from-scratch VGG16-BN at 48x48) and batch size:
  1. pipeline: training.make_dataset (uint8 arrays -> shuffle -> batch -> cast ->
     flip/rotate/zoom/shift/erase) feeding model.fit, exactly as training does;
  2. bare: model.fit on one in-memory float batch repeated (no input work at all);
  3. bare in float32, for the bf16/float32 speed ratio;
  4. bare float32 in two child processes, TF_ENABLE_ONEDNN_OPTS=1 and =0 (it is read at
     import), for the oneDNN on/off ratio (the scripts turn it on on every x86 CPU). float32,
     as CPUs without bf16 instructions train; bf16 without oneDNN is not worth timing (2.6 img/s
     against 71 with it, measured once, BENCHMARKS.md).
Images/s are timed between batch callbacks after warm-up steps (graph tracing excluded).

    .venv/bin/python bench/train_throughput.py            # about 5 minutes on 2 cores
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from fervgg import config


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

    from fervgg.emotion_model import build_model
    from fervgg.training import compile_model

    keras.mixed_precision.set_global_policy(precision)
    model = build_model(n_classes, size, "none")
    compile_model(model, "adam", 1e-3)
    return model


def bare_rate(precision: str, steps: int, warmup: int, batch: int) -> float:
    """Images/s of model.fit on one repeated in-memory batch (this process)."""
    import tensorflow as tf

    size, n_classes = config.IMAGE_SIZE, len(config.CLASS_NAMES)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 1)).astype(np.float32)
    y = tf.one_hot(rng.integers(0, n_classes, batch), n_classes)
    bare = tf.data.Dataset.from_tensors((tf.constant(x), y)).repeat()
    return timed_fit(fresh_model(precision, n_classes, size), bare, steps, warmup, batch)


def onednn_child(flag: str, precision: str, args) -> tuple[float, str]:
    """(img/s, oneDNN state TensorFlow reports) in a child process with TF_ENABLE_ONEDNN_OPTS=flag."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag)
    out = subprocess.run([sys.executable, __file__, "--child", precision, "--steps", str(args.steps),
                          "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), out[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=config.BATCH_SIZE)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--images", type=int, default=4096, help="synthetic training images in memory")
    p.add_argument("--child", metavar="PRECISION", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one measurement for onednn_child(): "<img/s> <oneDNN on|off>"
        from fervgg.common import import_tensorflow, onednn_enabled

        import_tensorflow()
        rate = bare_rate(args.child, args.steps, args.warmup, args.batch_size)
        print(f"{rate:.2f} {'on' if onednn_enabled() else 'off'}")
        return

    from fervgg.common import cpu_description, import_tensorflow, onednn_enabled

    import_tensorflow()
    import tensorflow as tf

    from fervgg.hardware import cpu_has_bf16
    from fervgg.training import Augmentation, make_dataset

    size, n_classes, batch = config.IMAGE_SIZE, len(config.CLASS_NAMES), args.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, size, size, 1), dtype=np.uint8)
    y = rng.integers(0, n_classes, args.images)
    pipeline = make_dataset(x, y, batch, n_classes, 0, Augmentation(), shuffle=True).repeat()
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
    onednn = {}
    for flag in ("1", "0", "1", "0"):  # alternated, best of two each
        rate, state = onednn_child(flag, "float32", args)
        onednn[flag] = max(onednn.get(flag, (0.0, ""))[0], rate), state

    pipe, bare_ips = max(results["pipeline"]), max(results["bare"])
    print(f"machine: {cpu_description()}; oneDNN {'on' if onednn_enabled() else 'off'} in this process")
    print(f"model: VGG16-BN {size}x{size}, batch {batch}, precision {precision}")
    runs = {k: ", ".join(f"{v:.1f}" for v in vals) for k, vals in results.items()}
    print(f"pipeline (tf.data + augmentation) : {pipe:7.1f} img/s  (runs: {runs['pipeline']})")
    print(f"bare model.fit (in-memory tensors): {bare_ips:7.1f} img/s  (runs: {runs['bare']})")
    print(f"ratio pipeline/bare: {pipe / bare_ips:.2f}  (target >= 0.9)")
    print(f"bare float32: {f32:.1f} img/s; {precision}/float32 speed ratio: {bare_ips / f32:.2f}")
    (on, on_state), (off, off_state) = onednn["1"], onednn["0"]
    print(f"bare float32, TF_ENABLE_ONEDNN_OPTS=1: {on:.1f} img/s (TF reports oneDNN {on_state}); "
          f"=0: {off:.1f} img/s ({off_state}); on/off ratio: {on / off:.2f}")


if __name__ == "__main__":
    main()
