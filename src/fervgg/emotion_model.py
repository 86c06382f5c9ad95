"""The model: VGG16 backbone + small head, with preprocessing inside.

A saved model takes raw grayscale pixels, shape (S, S, 1), values 0-255 (uint8 or
float): gray -> 3 channels and VGG16's own preprocessing (caffe mode: subtract the
ImageNet BGR means) are layers of the model, so no caller can feed it wrongly. Only
built-in Keras layers are used, so models load with safe_mode=True and no custom code.

Each saved model has a JSON sidecar (same name, .json) with its class names, input
size and the effective training settings: `write_sidecar()` writes it, `model_info()`
reads it (this module is the format's only owner).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg.common import (FervggError, atomic_write_json, filtered_stderr, first_line, import_tensorflow,
                           library_versions, loads_json, model_not_found, printable, sha256_file, utc_now)

# VGG16 "caffe" preprocessing: BGR channel means of ImageNet, no scaling.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)
VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
BACKBONE_NAME = "vgg16"
ALL_POOLS = (1, 2, 3, 4, 5)  # the VGG blocks that end in a 2x2 max-pool


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_help() -> str:
    return (
        f"cannot download the ImageNet weights file {config.VGG16_NOTOP_WEIGHTS} (offline?). "
        f"Put it in {keras_cache_dir()}/ (Keras's cache), or pass `weights` PATH to a local copy, "
        "or `weights` none to train from scratch"
    )


def resolve_weights(weights: str) -> str:
    """"fer2013" -> the shipped model's path; other values unchanged."""
    return str(config.PRETRAINED_MODEL) if weights == "fer2013" else weights


def is_model_file(weights: str) -> bool:
    """Does `weights` name a saved model of ours (its backbone is reused), not a weights file?"""
    return weights == "fer2013" or Path(weights).suffix == ".keras"


def saved_backbone(weights: str, image_size: int, backbone_size: int | None = None):
    """The VGG16 backbone (with its trained weights) of a saved emotion model of ours."""
    path = Path(resolve_weights(weights)).expanduser()
    if not path.is_file():
        hint = (" (the shipped model: git clone/pull the full repository)" if weights == "fer2013"
                else " (expected a .keras model saved by model_training.py)")
        raise FervggError(f"model to start from not found: {path}{hint}")
    saved = load_model(path)
    try:
        trained = saved.get_layer(BACKBONE_NAME)
    except ValueError:
        raise FervggError(f"{path} has no '{BACKBONE_NAME}' backbone: not a model saved by this project") from None
    side = int(saved.input_shape[1])
    if side != image_size:
        raise FervggError(f"{path} takes {side}x{side} images but the data is {image_size}x{image_size}: "
                        f"preprocess with `image_size` {side}")
    # A fresh backbone of the same layout (so it computes in this run's precision), then
    # the trained weights.
    with_bn = any(layer.name.endswith("_bn") for layer in trained.layers)
    new_side = backbone_size or image_size
    backbone = vgg16_bn_backbone(new_side, pooled_blocks_of(trained)) if with_bn else plain_vgg16(new_side)
    backbone.set_weights(trained.get_weights())
    return backbone, saved


def vgg16_backbone(image_size: int, weights: str):
    """Keras's VGG16 without its top. `weights`: "imagenet", "none" or a file path."""
    import keras

    shape = (image_size, image_size, 3)
    if weights == "none":
        return vgg16_bn_backbone(image_size)
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # Keras raises a bare Exception on a failed download
            if "fetch failure" in str(exc) or "URL" in str(exc) or isinstance(exc, OSError):
                raise FervggError(imagenet_weights_help()) from None
            raise
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FervggError(f"weights file not found: {path} (expected {config.VGG16_NOTOP_WEIGHTS} "
                        "or a .weights.h5 file of VGG16 without top)")
    try:
        return keras.applications.VGG16(include_top=False, weights=str(path), input_shape=shape)
    except Exception as exc:
        raise FervggError(f"cannot load VGG16 weights from {path}: {first_line(exc)}") from None


def plain_vgg16(image_size: int):
    """Keras's VGG16 layout without weights (to copy trained weights into)."""
    import keras

    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))


def vgg16_bn_backbone(image_size: int, pooled_blocks: tuple[int, ...] = ALL_POOLS):
    """VGG16's layout with batch normalisation after every convolution.

    Used when training from scratch: without pretrained weights, plain VGG16 barely
    trains on 48x48 faces, while batch norm makes it converge in a few epochs.
    `pooled_blocks`: the blocks that end in a max-pool. Dropping a pool (VGG's fifth block
    sees 2x2 pixels of a 40x40 face) keeps every weight's shape, so trained weights fit.
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for block, (filters, convs) in enumerate(VGG_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            name = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_relu")(x)
        if block in pooled_blocks:
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="vgg16_bn")


def pooled_blocks_of(backbone) -> tuple[int, ...]:
    """Which blocks of a VGG16 backbone end in a max-pool (see vgg16_bn_backbone)."""
    return tuple(int(layer.name[5]) for layer in backbone.layers
                 if layer.name.startswith("block") and layer.name.endswith("_pool"))


def build_model(num_classes: int, image_size: int = config.IMAGE_SIZE, weights: str = config.WEIGHTS,
                dense_units: int = config.DENSE_UNITS, dropout: float = config.DROPOUT,
                crop_size: int = config.CROP_SIZE, pooled_blocks: tuple[int, ...] | None = None):
    """Raw (S, S, 1) pixels 0-255 -> class probabilities (float32 even under mixed precision).

    With a crop_size, the model reads the centre crop_size x crop_size window of its input
    (a CenterCrop layer): it was trained on random windows of that size (training.random_crops).
    `pooled_blocks` (from scratch only, see vgg16_bn_backbone): None keeps all five pools, or
    a saved model's own layout when starting from one.
    """
    import keras
    from keras import layers

    if image_size < 32:
        raise FervggError(f"image size {image_size} is too small for VGG16 (at least 32)")
    inputs = keras.Input((image_size, image_size, 1), name="pixels")
    x = inputs
    if crop_size:
        x = layers.CenterCrop(crop_size, crop_size, name="center_crop", dtype="float32")(x)
    x = layers.Concatenate(name="gray_to_rgb", dtype="float32")([x, x, x])
    x = layers.Normalization(mean=list(VGG_MEAN_BGR), variance=[1.0, 1.0, 1.0],
                             name="vgg16_preprocess", dtype="float32")(x)
    source = None
    if pooled_blocks is not None and weights != "none":
        raise FervggError("a VGG16 without some of its max-pools is built from scratch only (weights none)")
    if pooled_blocks is not None:
        backbone = vgg16_bn_backbone(crop_size or image_size, tuple(pooled_blocks))
    elif is_model_file(weights):
        backbone, source = saved_backbone(weights, image_size, crop_size or image_size)
    else:
        backbone = vgg16_backbone(crop_size or image_size, weights)
    backbone.name = BACKBONE_NAME
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    head = layers.Dense(dense_units, activation="relu", name="head_dense")
    x = head(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="emotion")(x)
    model = keras.Model(inputs, outputs, name="emotion_vgg16")
    if source is not None:
        # The hidden head layer holds class-independent features too: keep it when it fits.
        old = source.get_layer("head_dense")
        if tuple(old.kernel.shape) == tuple(head.kernel.shape):
            head.set_weights(old.get_weights())
    return model


def set_backbone_trainable(model, trainable_blocks: int | None) -> None:
    """None: whole backbone trainable; 0: frozen; k: only the top k conv blocks train."""
    backbone = model.get_layer(BACKBONE_NAME)
    if trainable_blocks is None:
        backbone.trainable = True
        return
    backbone.trainable = trainable_blocks > 0
    first_trainable = len(VGG_BLOCKS) - trainable_blocks + 1
    for layer in backbone.layers:
        block = int(layer.name[5]) if layer.name.startswith("block") else 0
        # BatchNorm stays frozen (inference mode) when fine-tuning, as Keras recommends.
        is_bn = layer.__class__.__name__ == "BatchNormalization"
        layer.trainable = block >= first_trainable and not is_bn


# ---------------------------------------------------------------- loading and metadata

def sidecar_path(model_path: Path) -> Path:
    """NAME.json, for NAME.keras and its exports NAME.tflite and NAME.int8.tflite alike."""
    path = Path(model_path)
    if path.name.endswith(config.INT8_SUFFIX):
        return path.with_name(path.name.removesuffix(config.INT8_SUFFIX) + ".json")
    return path.with_suffix(".json")


def folder_not_model(path: Path) -> FervggError:
    return FervggError(f"{path} is a folder: pass the model file in it, e.g. {Path(path) / config.BEST_MODEL}")


def check_model_file(path: Path) -> Path:
    """The path, if it is a file; the one "is a folder" / "model not found" error otherwise
    (for every kind of model file: .keras, .h5, .tflite)."""
    path = Path(path)
    if path.is_dir():
        raise folder_not_model(path)
    if not path.is_file():
        raise model_not_found(path)
    return path


# An "E0000 ..." line TF logs once when float16 weights (the shipped model's) load on CPUs without
# AVX-512: harmless, and users cannot act on it, so load_model does not show it.
HALF_ON_AVX2_NOISE = "oneDNN supports DT_HALF only on platforms with AVX-512"


def load_model(model_path: Path, compile: bool = False, float32: bool = True):
    """Load a .keras (or legacy .h5) model safely; FervggError if missing or unreadable.

    `float32` (the default, for inference) rebuilds a mixed-precision model in float32:
    predictions are then the same on every path (Keras, LiteRT export) and no bf16
    rounding is added at inference. Training passes float32=False to keep its policy.
    """
    model_path = check_model_file(model_path)
    if model_path.suffix.lower() == ".tflite":
        raise FervggError(f"{model_path} is a LiteRT model: this step needs a Keras model (.keras), e.g. the "
                          "one it was exported from")
    if model_path.suffix == ".keras" and not zipfile.is_zipfile(model_path):
        raise FervggError(f"{model_path} exists but is not a valid Keras model file (a .keras file is a zip "
                        "archive; this one is damaged or truncated): re-train or re-copy it")
    import_tensorflow()
    try:
        with filtered_stderr(HALF_ON_AVX2_NOISE):
            model = keras_load(model_path, compile=compile)
            return as_float32(model) if float32 else model
    except Exception as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            what = next((kind for name, kind in CODE_LAYERS.items() if name in text), "code Keras's safe mode refuses")
            raise FervggError(f"{model_path} contains {what} and is refused: models are only loaded from "
                              "built-in layers") from None
        raise FervggError(f"cannot load model {model_path}: {keras_error_line(exc)}") from None


# What Keras's safe mode refuses to load, as a user would name it.
CODE_LAYERS = {"TFSMLayer": "a TFSMLayer (an external TensorFlow SavedModel, which can run code)",
               "Lambda": "code (a Lambda layer)"}


def keras_load(path: Path, compile: bool = False):
    """keras.models.load_model with safe_mode, its Python warnings (archive members with "..",
    sublayers it skips, NumPy deprecations) kept from the user: what matters is raised."""
    import keras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return keras.models.load_model(path, compile=compile, safe_mode=True)


def keras_error_line(exc: BaseException, limit: int = 300) -> str:
    """One line of a Keras loading error with its cause: Keras puts the cause after a line
    ending in ":" ("Example error message for object <Dense ...>:") and then dumps values."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text.split(" Target variable:")[0][:limit]


def _config_with_policy(node, name: str):
    """A model config with every dtype policy (mixed, float16, ...) replaced by `name`."""
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy":
            return name
        return {k: _config_with_policy(v, name) for k, v in node.items()}
    if isinstance(node, list):
        return [_config_with_policy(v, name) for v in node]
    return node


def with_policy(model, name: str):
    """The same model rebuilt with every layer in dtype policy `name`, weights cast to it."""
    with filtered_stderr(HALF_ON_AVX2_NOISE):  # float16: export_model.py --float16 makes one
        clone = model.__class__.from_config(_config_with_policy(model.get_config(), name))
        clone.set_weights([np.asarray(w).astype(v.dtype) for v, w in zip(clone.weights, model.get_weights())])
    return clone


def as_float32(model):
    """The same model computing in float32 (weights are float32 under mixed precision anyway;
    float16-stored weights are widened exactly)."""
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in _all_layers(model)):
        return model
    return with_policy(model, "float32")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


SIDECAR_VERSION = 1


@dataclass
class ModelInfo:
    """What a saved model's sidecar says about it (or what is assumed without one)."""
    class_names: list[str]
    image_size: int
    sidecar: dict = field(default_factory=dict)  # the whole sidecar, {} when there is none
    assumed: str | None = None  # why the classes are assumed, when there is no sidecar
    crop_size: int = 0  # the random-crop training size (the model reads its centre crop), 0: none


def _as_json(value):
    """A setting as JSON holds it: paths (alone or in lists) as text."""
    if isinstance(value, Path):
        return str(value)
    return [_as_json(v) for v in value] if isinstance(value, list) else value


def write_sidecar(model_path: Path, settings, meta: dict, run_name: str, phase: int, best_acc: float,
                  best_epoch: int, hardware: str, elapsed: float) -> None:
    """<model>.json: classes, input, effective settings (a train.TrainSettings), data
    checksums, result, versions."""
    info = {
        "format_version": SIDECAR_VERSION,
        "model": model_path.name,
        "created": utc_now(),
        "class_names": meta["class_names"],
        "image_size": meta["image_size"],
        "input": f"raw grayscale pixels 0-255, shape (N, {meta['image_size']}, {meta['image_size']}, 1)",
        "crop_size": settings.crop_size,
        "phase": phase,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "training_seconds": round(elapsed, 1),
        "run_name": run_name,
        "hardware": hardware,
        "config": {k: _as_json(v) for k, v in dataclasses.asdict(settings).items()},
        "data": {"dir": str(settings.data_dir.resolve()), "sha256": meta["sha256"], "counts": meta["counts"]},
        "versions": library_versions("tensorflow", "keras", "numpy"),
    }
    teachers = getattr(settings, "teacher", None) or []
    if teachers:
        info["teacher"] = [{"file": str(t), "sha256": sha256_file(Path(t)) if Path(t).is_file() else None}
                           for t in teachers]
    atomic_write_json(sidecar_path(model_path), info)


def model_info(model_path: Path, num_outputs: int | None = None) -> ModelInfo:
    """Class names and input size of a saved model, from its JSON sidecar.

    Models without a sidecar (e.g. a user's .h5) are assumed to use the FER2013 classes
    if they have 7 outputs. A sidecar that exists but cannot be used is an error.
    """
    side = sidecar_path(model_path)
    if side.is_file():
        damaged = f"{side} (the model's sidecar) is damaged: {{}}; re-train, or delete it to assume FER2013's classes"
        try:
            info = loads_json(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FervggError(damaged.format(first_line(exc, 120))) from None
        if not isinstance(info, dict) or not isinstance(info.get("class_names"), list) \
                or not isinstance(info.get("image_size"), int):
            raise FervggError(damaged.format("no class_names list and image_size"))
        names = info["class_names"]
        if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
            raise FervggError(damaged.format(f"class_names {printable(names)[:120]} are not distinct non-empty "
                                             "strings"))
        version = info.get("format_version", SIDECAR_VERSION)
        if version != SIDECAR_VERSION:
            raise FervggError(damaged.format(f"format version {version}, this code reads {SIDECAR_VERSION}"))
        crop = info.get("crop_size") or 0
        if not isinstance(crop, int) or not 0 <= crop <= info["image_size"]:
            raise FervggError(damaged.format(f"crop_size {crop!r} is not 0..{info['image_size']}"))
        return ModelInfo(list(names), info["image_size"], info, crop_size=crop)
    if num_outputs in (None, len(config.CLASS_NAMES)):
        return ModelInfo(list(config.CLASS_NAMES), config.IMAGE_SIZE,
                         assumed=f"{side} not found: assuming FER2013's 7 classes")
    raise FervggError(f"{side} is missing and the model has {num_outputs} outputs: cannot tell its class names")


def default_model_path(models_dir: Path) -> Path:
    """fine_tuned_model.keras if present, else best_model.keras."""
    models_dir = Path(models_dir)
    fine = models_dir / config.FINE_TUNED_MODEL
    return fine if fine.is_file() else models_dir / config.BEST_MODEL
