"""Weight averaging: several checkpoints of one training run -> one model, at no training cost.

The last epochs of a run whose learning rate decays wander around one minimum; the mean of
their weights often generalises better than any one of them (Izmailov et al. 2018,
"Averaging Weights Leads to Wider Optima and Better Generalization"). Batch-norm statistics
are averaged with the weights, or, with `bn_data`, measured again by the averaged network on
training images: a mean of weights is not the network whose layer inputs each checkpoint's
statistics describe.

    epoch31.keras ... epoch40.keras -> averaged.keras (+ averaged.json, the sidecar)

The models must share one architecture (checkpoints of one run); the sidecar (class names,
image size, training record) is copied from `sidecar` (default: the last model's) with an
`averaged_from` record added. Judge the result on validation data before publishing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fervgg import config, emotion_model
from fervgg.artifacts import load_split, read_meta
from fervgg.classifiers import Notes, print_note
from fervgg.common import (FervggError, atomic_save_keras, atomic_write_json, read_json, same_path, sha256_file,
                           utc_now)


CHECKPOINT_NAME = re.compile(r"phase(\d+)-epoch(\d+)\.keras")  # as training's keep_epochs names them


@dataclass
class AverageSettings:
    models: list[Path] = field(default_factory=list)  # at least two .keras checkpoints of one run, or one
    # kept-epochs folder (<models_dir>/epochs/<run name>/): its checkpoints in training order
    out: Path = Path("averaged.keras")  # the averaged model (its sidecar beside it)
    sidecar: Path | None = None  # the model whose sidecar is copied (default: the last of `models`)
    bn_data: Path | None = None  # a preprocessed data folder: re-measure batch-norm statistics on its train split
    bn_images: int = 4096  # training images for that
    batch_size: int = config.EVAL_BATCH_SIZE
    seed: int = config.SEED
    last: int | None = None  # only the last N of `models` (in training order for a folder)

    def __post_init__(self):
        self.models = [Path(m) for m in self.models]
        self.out = Path(self.out)
        if len(self.models) == 1 and self.models[0].is_dir():
            self.models = kept_checkpoints(self.models[0])
        if self.last is not None:
            if self.last < 2:
                raise FervggError("`last` must be at least 2: averaging takes two or more checkpoints")
            if self.last > len(self.models):
                raise FervggError(f"`last` {self.last}: there are only {len(self.models)} checkpoints")
            self.models = self.models[-self.last:]
        if len(self.models) < 2:
            raise FervggError("`models`: give at least two checkpoints to average")
        other = next((m for m in self.models if m.suffix.lower() not in (".keras", ".h5")), None)
        if other is not None:
            raise FervggError(f"`models`: {other.name} is not a Keras checkpoint (.keras): averaging reads "
                              "Keras weights (a .tflite is exported from a .keras; average those)")
        if len({m.resolve() for m in self.models}) != len(self.models):
            raise FervggError("`models`: a checkpoint is given twice")
        if self.out.suffix != ".keras":
            raise FervggError(f"`out` must be a .keras file, not {self.out.name}")
        if any(same_path(m, self.out) for m in self.models):
            raise FervggError(f"`out` {self.out} is one of the `models`: write the average elsewhere")
        if self.bn_images < 1 or self.batch_size < 1:
            raise FervggError("`bn_images` and `batch_size` must be at least 1")


def kept_checkpoints(folder: Path) -> list[Path]:
    """The phase<P>-epoch<E>.keras files of a kept-epochs folder, in training order (epoch 10
    after epoch 9, which a sorted file listing gets wrong)."""
    found = [(int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.fullmatch(p.name))]
    if not found:
        raise FervggError(f"`models`: {folder} holds no phaseP-epochE.keras checkpoints (train with "
                          "`keep_epochs` to keep them)")
    return [p for _, _, p in sorted(found)]


def average(settings: AverageSettings, notes: Notes | None = None) -> Path:
    """Write the averaged model and its sidecar to settings.out; returns that path."""
    notes = notes or print_note
    for path in settings.models:
        if not path.exists():  # the generic "model not found" names another script's flag
            raise FervggError(f"`models`: {path} not found")
        emotion_model.check_model_file(path)
    source = settings.sidecar or settings.models[-1]
    side = emotion_model.sidecar_path(source)
    if not side.is_file():
        raise FervggError(f"{side} is missing: give `sidecar`, a model of the same run with its sidecar "
                          "(resume checkpoints have none; the run's best_model.keras has)")
    emotion_model.model_info(source)  # a damaged sidecar is refused before any work
    info = read_json(side, "the sidecar")
    if settings.bn_data is not None:
        read_meta(settings.bn_data)

    model, total = None, None
    for i, path in enumerate(settings.models, start=1):
        current = emotion_model.load_model(path)
        weights = [np.asarray(w, np.float64) for w in current.get_weights()]
        if model is None:
            model, total = current, weights
        else:
            shapes = [w.shape for w in total]
            if [w.shape for w in weights] != shapes:
                raise FervggError(f"{path} is not the same architecture as {settings.models[0]}: only "
                                  "checkpoints of one run can be averaged")
            total = [t + w for t, w in zip(total, weights)]
        notes(f"read {path.name} ({i} of {len(settings.models)})")
    model.set_weights([(t / len(settings.models)).astype(v.dtype) for t, v in zip(total, model.weights)])

    batch_norm = "averaged with the weights"
    if settings.bn_data is not None:
        images = training_images(settings.bn_data, settings.bn_images, settings.seed)
        layers = remeasure_batch_norm(model, images, settings.batch_size)
        batch_norm = (f"re-measured on {len(images)} training images of {settings.bn_data} "
                      f"({layers} layers)")
        notes(f"batch norm {batch_norm}")

    atomic_save_keras(model, settings.out)
    info["model"] = settings.out.name
    info.pop("litert_export", None)  # records of other files' exports
    info.pop("litert_int8_export", None)
    info["averaged_from"] = {"models": [{"file": p.name, "sha256": sha256_file(p)} for p in settings.models],
                             "batch_norm": batch_norm, "created": utc_now()}
    atomic_write_json(emotion_model.sidecar_path(settings.out), info)
    print(f"wrote {settings.out}: the mean of {len(settings.models)} models; batch norm {batch_norm}")
    return settings.out


def training_images(data_dir: Path, count: int, seed: int) -> np.ndarray:
    """`count` images of the train split, a seeded random choice, as the model takes them."""
    x = load_split(data_dir, "train").x
    chosen = np.random.default_rng(seed).permutation(len(x))[:count]
    return x[np.sort(chosen)].astype(np.float32)


def remeasure_batch_norm(model, images: np.ndarray, batch_size: int) -> int:
    """Replace every batch-norm layer's moving mean and variance with the mean of its batch
    statistics over `images`, run through the model in training mode; returns the layer count.
    (Training mode also switches dropout on; in our models dropout comes after every batch-norm
    layer, so it changes nothing measured here.)"""
    import keras

    layers = [layer for layer in emotion_model._all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    try:
        for layer in layers:
            layer.trainable = True  # a frozen batch-norm layer would run in inference mode
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
        for k, start in enumerate(range(0, len(images), batch_size), start=1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / k  # new = (k-1)/k old + 1/k batch: the running mean
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(layers)
