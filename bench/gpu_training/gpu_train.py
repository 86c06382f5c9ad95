"""Train the emotion model on one GPU with Keras 3's JAX backend (no TensorFlow on that machine).

Issue 18's run on a lent H200: the model of fervgg.emotion_model.build_model (same layer names,
so the weights load into the TensorFlow-built model unchanged), the preprocessed FER2013 split
of /work/runs/v4/fer-data (same val split as the shipped model), the augmentation of
fervgg.training.Augmentation (flip, rotation 10, zoom 0.1, random 40x40 crop on a zero canvas,
random erasing), SGD with Nesterov momentum, decoupled weight decay and label smoothing; the
learning rate warms up, then follows a cosine spread over the wall time left until a deadline.
Optional mixup (host side, per batch) and distillation targets (--teacher).

At the end, two candidates: the last epoch and the mean of the weights of the last
`--swa-fraction` of epochs (batch norm re-measured, as fervgg.averaging does), each judged in
float32 on the val split, one view and ten-crop. Written to --work: <run>-<candidate>.f16
(float16 weights, concatenated in model.weights order) and <run>.json (log, results).

    KERAS_BACKEND=jax python gpu_train.py --data DIR --work DIR --run A --deadline 430

Distillation needs a teacher: the mean probabilities of several models on every training image.
--train-probs makes a run write its best candidate's (one view + mirror, float32) as
<run>-train-probs.npy; `probs` computes the same here for a .keras model of ours (TensorFlow);
`teacher` averages such files into the --teacher file:

    python gpu_train.py probs models/pretrained/fer2013_vgg16.keras DATA v3.npy    # here
    python gpu_train.py teacher teacher.npy WORK/*-train-probs.npy v3.npy          # either side
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import sys
import time
from pathlib import Path

import numpy as np

from fervgg.common import atomic_write_bytes, atomic_write_json, cpu_description, library_versions

T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:6.1f}s]", *args, flush=True)


def load_data(folder: str):
    """X_train from its delta-coded xz file (see pack_data), the rest from .npy files."""
    with open(os.path.join(folder, "X_train.json")) as f:
        info = json.load(f)
    with open(os.path.join(folder, "X_train.delta.xz"), "rb") as f:
        delta = np.frombuffer(lzma.decompress(f.read()), np.uint8).reshape(info["shape"])
    x_train = np.cumsum(delta, axis=2, dtype=np.uint8)  # wraps mod 256: undoes the uint8 diff exactly
    digest = hashlib.sha256(x_train.tobytes()).hexdigest()
    if digest != info["sha256"]:
        raise SystemExit(f"X_train damaged in transit: sha256 {digest} != {info['sha256']}")

    def npy(name):
        return np.load(os.path.join(folder, name), allow_pickle=False)

    return x_train, npy("y_train.npy"), npy("X_val.npy"), npy("y_val.npy")


def pack_data(src: str, dst: str):
    """Here (CPU): fer-data/X_train.npy -> X_train.delta.xz + X_train.json; copies the rest."""
    import shutil
    os.makedirs(dst, exist_ok=True)
    x = np.load(os.path.join(src, "X_train.npy"), allow_pickle=False)
    delta = np.diff(x.astype(np.int16), axis=2, prepend=0).astype(np.uint8)
    with open(os.path.join(dst, "X_train.delta.xz"), "wb") as f:
        f.write(lzma.compress(delta.tobytes(), preset=6))
    with open(os.path.join(dst, "X_train.json"), "w") as f:
        json.dump({"shape": list(x.shape), "sha256": hashlib.sha256(x.tobytes()).hexdigest()}, f)
    for name in ("y_train.npy", "X_val.npy", "y_val.npy"):
        shutil.copy(os.path.join(src, name), dst)


def mirror_mean(predict, x) -> np.ndarray:
    """The mean of the probabilities of each image and of its mirror image: a teacher's targets."""
    x = np.asarray(x, np.float32)
    return ((predict(x) + predict(x[:, :, ::-1])) / 2).astype(np.float32)


def keras_train_probs(model_path: str, data: str, out: str):
    """Here (TensorFlow): a .keras model of ours -> its mirror_mean probabilities on X_train."""
    from fervgg.classifiers import KerasClassifier

    model = KerasClassifier(Path(model_path))
    x = np.load(os.path.join(data, "X_train.npy"), allow_pickle=False)
    probs = mirror_mean(model.predict, x)
    atomic_write_bytes(Path(out), lambda f: np.save(f, probs, allow_pickle=False))
    print(f"{model_path}: {probs.shape} probabilities -> {out}")


def average_teachers(out: str, members: list[str]):
    """The teacher: the mean of the members' probabilities (same images, same order)."""
    arrays = [np.load(m, allow_pickle=False) for m in members]
    if not arrays or any(a.shape != arrays[0].shape or a.ndim != 2 for a in arrays):
        raise SystemExit(f"teacher: members must be (N, classes) arrays of one shape: {[a.shape for a in arrays]}")
    mean = np.mean(arrays, axis=0, dtype=np.float64)
    mean /= mean.sum(1, keepdims=True)
    atomic_write_bytes(Path(out), lambda f: np.save(f, mean.astype(np.float32), allow_pickle=False))
    print(f"teacher: the mean of {len(arrays)} members {mean.shape} -> {out}")


def training_targets(y, n_classes: int, teacher=None, weight: float = 0.0, temperature: float = 1.0):
    """fervgg.training.soft_targets (one-hot labels, or mixed with a softened teacher), its
    errors as this tool's exits. Imported here: fervgg.training imports Keras, whose backend
    the caller chooses first."""
    from fervgg.common import FervggError
    from fervgg.training import soft_targets

    try:
        return soft_targets(y, n_classes, teacher, weight, temperature)
    except FervggError as exc:
        raise SystemExit(f"teacher: {exc}") from None


def random_crop_layer():
    """The layer class (Keras is imported only once the backend is chosen)."""
    import keras
    from keras import layers, ops

    class RandomCropOnCanvas(layers.Layer):
        """fervgg.training.random_crops in Keras ops: a random crop x crop window of each image,
        put back at the centre of a zero canvas, where the model's CenterCrop reads it."""

        def __init__(self, crop, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.crop = crop
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training:
                return images
            b, size, _, c = ops.shape(images)
            starts = keras.random.randint((b, 2), 0, size - self.crop + 1, seed=self.seed_generator)
            window = ops.arange(self.crop)
            rows = ops.broadcast_to((starts[:, :1] + window)[:, :, None, None], (b, self.crop, size, c))
            out = ops.take_along_axis(images, rows, axis=1)
            cols = ops.broadcast_to((starts[:, 1:] + window)[:, None, :, None], (b, self.crop, self.crop, c))
            out = ops.take_along_axis(out, cols, axis=2)
            before = (size - self.crop) // 2
            after = size - self.crop - before
            return ops.pad(out, [[0, 0], [before, after], [before, after], [0, 0]])

    return RandomCropOnCanvas


def training_model(emotion, crop: int, erasing: float, seed: int):
    """Augmentation layers (active in training only, float32) + the emotion model."""
    import keras
    from keras import layers

    crop_layer = random_crop_layer()
    f32 = {"dtype": "float32"}
    inputs = keras.Input((48, 48, 1), name="pixels")
    x = layers.RandomFlip("horizontal", seed=seed, **f32)(inputs)
    x = layers.RandomRotation(10.0 / 360.0, fill_mode="reflect", seed=seed + 1, **f32)(x)
    x = layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2, **f32)(x)
    if crop:
        x = crop_layer(crop, seed=seed + 3, **f32)(x)
    if erasing > 0:
        x = layers.RandomErasing(factor=erasing, scale=(0.02, 0.15), value_range=(0, 255), seed=seed + 4,
                                 **f32)(x)
    model = keras.Model(inputs, emotion(x), name="train_wrapper")
    # RandomRotation and RandomZoom say they cannot be jit-compiled (true of TensorFlow's XLA, whose
    # image transform op they use there); under JAX they are plain jnp code. Without this, Keras
    # runs the whole training step op by op (seen: 20 s for 4 steps of 32 on a CPU).
    for layer in model._flatten_layers():
        layer.supports_jit = True
    return model


def batches(x, y_onehot, batch: int, seed: int, mixup: float):
    import keras

    class Batches(keras.utils.PyDataset):
        """Shuffled full batches (a constant shape: one compiled step), optional mixup."""

        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return len(x) // batch

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch:(i + 1) * batch])
            xb, yb = x[idx].astype(np.float32), y_onehot[idx]
            if mixup > 0:
                lam = np.float32(self.rng.beta(mixup, mixup))
                perm = self.rng.permutation(batch)
                xb = lam * xb + (1 - lam) * xb[perm]
                yb = lam * yb + (1 - lam) * yb[perm]
            return xb, yb

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return Batches()


def save_weights_f16(model, path: Path):
    """float16 weights, concatenated in model.weights order (import_candidate.py reads them)."""
    blob = b"".join(np.asarray(w, np.float16).tobytes() for w in model.get_weights())
    atomic_write_bytes(path, lambda f: f.write(blob))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--deadline", type=float, required=True, help="seconds after start when training must end")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--wd", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mixup", type=float, default=0.0)
    p.add_argument("--teacher", help="(N, 7) .npy of teacher probabilities for the training images, in order")
    p.add_argument("--teacher-weight", type=float, default=0.7, help="share of the teacher in the target")
    p.add_argument("--teacher-temperature", type=float, default=1.0, help="softens the teacher: softmax(log p / T)")
    p.add_argument("--erasing", type=float, default=0.5)
    p.add_argument("--crop", type=int, default=40)
    p.add_argument("--pooled-blocks", default="12345",
                   help="the VGG blocks that end in a max-pool (1235: block 5 sees 5x5 of a 40x40 crop)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--swa-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke test)")
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument("--require-gpu", action="store_true")
    p.add_argument("--train-probs", action="store_true",
                   help="also write the best candidate's probabilities on the training images (a teacher member)")
    p.add_argument("--val-limit", type=int, default=0, help="use only this many val images (smoke test)")
    a = p.parse_args()

    os.environ.setdefault("KERAS_BACKEND", "jax")  # here, not at import: tests import this module under TF
    import jax
    import keras

    from fervgg import emotion_model
    from fervgg.averaging import remeasure_batch_norm
    from fervgg.training import cosine_lr
    from fervgg.tta import predict_averaged

    work = Path(a.work)
    record = {"run": a.run, "args": vars(a), "devices": [str(d) for d in jax.devices()],
              "versions": library_versions("jax", "keras", "numpy"), "cpu": cpu_description(), "epochs": [],
              "candidates": {}}
    log(a.run, record["devices"], record["versions"], record["cpu"])
    if a.require_gpu and not any(d.platform == "gpu" for d in jax.devices()):
        raise SystemExit(f"no GPU seen by JAX: {record['devices']}")

    def save_record():
        atomic_write_json(work / f"{a.run}.json", record)

    x_train, y_train, x_val, y_val = load_data(a.data)
    n_classes = 7
    onehot = np.eye(n_classes, dtype=np.float32)
    teacher = np.load(a.teacher, allow_pickle=False) if a.teacher else None
    targets = training_targets(y_train, n_classes, teacher, a.teacher_weight, a.teacher_temperature)
    if teacher is not None:
        record["teacher_train_accuracy"] = float((teacher.argmax(1) == y_train).mean())
        log(f"teacher {a.teacher}: agrees with the labels on {record['teacher_train_accuracy']:.4f} of train, "
            f"weight {a.teacher_weight}")
    if a.limit:
        pick = np.sort(np.random.default_rng(0).permutation(len(x_train))[:a.limit])
        x_train, y_train, targets = x_train[pick], y_train[pick], targets[pick]
    if a.val_limit:
        pick = np.sort(np.random.default_rng(0).permutation(len(x_val))[:a.val_limit])
        x_val, y_val = x_val[pick], y_val[pick]
    log(f"data: train {x_train.shape}, val {x_val.shape}")

    keras.utils.set_random_seed(a.seed)
    keras.mixed_precision.set_global_policy(a.precision)
    pooled = tuple(int(b) for b in a.pooled_blocks)
    emotion = emotion_model.build_model(n_classes, 48, "none", 256, a.dropout, a.crop, pooled)
    model = training_model(emotion, a.crop, a.erasing, a.seed)
    train = batches(x_train, targets, a.batch, a.seed, a.mixup)
    steps = len(train)
    spe = next(k for k in (8, 7, 6, 5, 4, 3, 2, 1) if steps % k == 0)  # whole executions per epoch
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=a.lr, momentum=0.9, nesterov=True,
                                                 weight_decay=a.wd or None),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=a.smoothing), metrics=["accuracy"],
                  steps_per_execution=spe, jit_compile=True)
    if model.jit_compile is not True:
        raise SystemExit("the training step would not be jit-compiled")
    val = (x_val.astype(np.float32), onehot[y_val])

    state = {"cos_start": None, "swa_sum": None, "swa_n": 0, "swa_from": None, "last_snap": time.time()}

    class Schedule(keras.callbacks.Callback):
        """Per-epoch lr: linear warm-up, then a cosine over the wall time left until the deadline
        (minus one epoch), so that it always ends at its floor however fast the epochs turn out
        (run 1 fixed the epoch count from the third epoch's time, before the other runs on the GPU
        had compiled, and two of three runs were cut off mid-cosine); the running weight sum over
        the last swa_fraction of the cosine."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()
            if epoch < a.warmup:
                lr, self.progress = a.lr * (epoch + 1) / (a.warmup + 1), 0.0
            else:
                if state["cos_start"] is None:
                    state["cos_start"] = self.start
                span = a.deadline - (state["cos_start"] - T0) - state.get("epoch_s", 0.0)
                self.progress = min(1.0, (self.start - state["cos_start"]) / max(span, 1e-6))
                lr = cosine_lr(a.lr, self.progress)
            self.model.optimizer.learning_rate = lr
            self.lr = lr

        def on_epoch_end(self, epoch, logs=None):
            now = time.time()
            took = now - self.start
            if epoch >= 1:  # the first epoch holds the compilation
                state["epoch_s"] = max(state.get("epoch_s", 0.0) * 0.8 + took * 0.2, took) if epoch > 1 else took
            row = {"epoch": epoch + 1, "lr": self.lr, "progress": round(self.progress, 4), "seconds": round(took, 2),
                   "at": round(now - T0, 1),
                   **{k: round(float(v), 5) for k, v in (logs or {}).items() if k != "learning_rate"}}
            record["epochs"].append(row)
            if epoch >= a.warmup and self.progress >= 1.0 - a.swa_fraction:
                if state["swa_from"] is None:
                    state["swa_from"] = record["swa_from_epoch"] = epoch + 1
                w = [np.asarray(v, np.float64) for v in emotion.get_weights()]
                state["swa_sum"] = w if state["swa_sum"] is None else [s + v for s, v in zip(state["swa_sum"], w)]
                state["swa_n"] += 1
            log(f"{a.run} epoch {epoch + 1} lr {self.lr:.5f} (progress {self.progress:.3f}) "
                f"loss {row.get('loss', 0):.4f} acc {row.get('accuracy', 0):.4f} "
                f"val {row.get('val_accuracy', 0):.4f} ({took:.1f}s)")
            if now - T0 + state.get("epoch_s", took) > a.deadline or epoch + 1 >= a.max_epochs:
                self.model.stop_training = True
            if now - state["last_snap"] > 60 or self.model.stop_training:
                # an interim copy, in case the machine's time ends before the end phase
                save_weights_f16(emotion, work / f"{a.run}-latest.f16")
                record["latest_epoch"] = epoch + 1
                save_record()
                state["last_snap"] = now

    log(f"{a.run}: {steps} steps of {a.batch} per epoch, {spe} per execution, deadline {a.deadline:.0f}s")
    model.fit(train, validation_data=val, validation_batch_size=512, epochs=a.max_epochs,
              callbacks=[Schedule()], verbose=0)
    record["epochs_run"] = len(record["epochs"])
    record["train_seconds"] = round(time.time() - T0, 1)
    save_record()

    # ---- end phase: candidates judged in float32, as inference runs them
    keras.mixed_precision.set_global_policy("float32")
    judge = emotion_model.build_model(n_classes, 48, "none", 256, a.dropout, a.crop, pooled)
    final = [np.asarray(w, np.float32) for w in emotion.get_weights()]
    candidates = {"last": final}
    if state["swa_n"] >= 2:
        candidates["swa"] = [(s / state["swa_n"]).astype(np.float32) for s in state["swa_sum"]]
    best_train_probs = (-1.0, None)
    rng = np.random.default_rng(1337)
    bn_images = x_train[np.sort(rng.permutation(len(x_train))[:4096])].astype(np.float32)
    for name, weights in candidates.items():
        judge.set_weights(weights)
        if name == "swa":
            remeasure_batch_norm(judge, bn_images, 256)

        def predict(v):
            return judge.predict(v, batch_size=512, verbose=0)

        one = predict(x_val.astype(np.float32))
        ten = predict_averaged(predict, x_val, crop_size=a.crop)
        result = {"val_accuracy": float((one.argmax(1) == y_val).mean()),
                  "val_accuracy_ten_crop": float((ten.argmax(1) == y_val).mean()),
                  "epochs": state["swa_n"] if name == "swa" else 1}
        record["candidates"][name] = result
        if a.train_probs and result["val_accuracy"] > best_train_probs[0]:
            best_train_probs = (result["val_accuracy"], mirror_mean(predict, x_train))
            record["train_probs_from"] = name
        save_weights_f16(judge, work / f"{a.run}-{name}.f16")
        log(f"{a.run} {name}: val {result['val_accuracy']:.4f}, ten-crop {result['val_accuracy_ten_crop']:.4f}")
    if best_train_probs[1] is not None:
        atomic_write_bytes(work / f"{a.run}-train-probs.npy",
                           lambda f: np.save(f, best_train_probs[1], allow_pickle=False))
    record["weights_layout"] = [[w.path, list(w.shape)] for w in judge.weights]
    record["done_seconds"] = round(time.time() - T0, 1)
    save_record()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pack":
        pack_data(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "probs":
        keras_train_probs(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "teacher":
        average_teachers(sys.argv[2], sys.argv[3:])
    else:
        main()
