"""The one way to run a model of ours: a `Classifier` (a .keras model through Keras, or its
.tflite export through LiteRT, optionally averaged over ten crops), opened by
`open_classifier`. Evaluation, export and prediction (photos and video) all use it.

    clf = open_classifier(Path("models/best_model.keras"))   # or a .tflite, or None: the default
    probs = clf.predict(faces)          # (N, S, S[, 1]) gray pixels 0-255 -> (N, C) float32
    clf.class_names, clf.image_size, clf.crop_size, clf.backend, clf.path

Which file runs (`find_model`), loading (one set of messages: emotion_model.load_model and
check_model_file) and what the model's sidecar says (class names, input size, crop size:
checked here, once) are decided in this module. TensorFlow is imported only to load a
.keras model: the LiteRT path never imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from fervgg import config
from fervgg import emotion_model  # TF-free at import time: TensorFlow is only imported to load a .keras
from fervgg.common import FervggError, check_gray_input, loads_json, model_not_found, sha256_file

# auto: the int8 export if current, else the float .tflite if current, else Keras; int8 and
# litert: that export (refused if missing); keras: the .keras model itself.
BACKENDS = ("auto", "int8", "litert", "keras")
BACKEND_HELP = ("auto: <model>.int8.tflite, else <model>.tflite, via LiteRT if present and up to date, else Keras; "
                "int8 / litert: that LiteRT file; keras: the .keras model")
EXPORT_HINT = "export it with scripts/export_model.py"
Notes = Callable[[str], None]


def print_note(text: str) -> None:
    """The default `notes`: a line on stderr."""
    print(text, file=sys.stderr)


class Classifier:
    """What every backend offers: gray pixels in, class probabilities out.

    `crop_size` is 0, or the side of the random crops the model was trained on (it then
    reads the centre crop_size window of its image_size input; ten-crop TTA uses windows of
    that size). `class_names` is filled by open_classifier from the model's sidecar.
    """

    backend = ""

    def __init__(self, path: Path, image_size: int, num_outputs: int):
        self.path = Path(path)
        self.image_size = image_size
        self.num_outputs = num_outputs
        self.crop_size = 0
        self.class_names: list[str] = []

    def predict(self, pixels, batch_size: int = config.EVAL_BATCH_SIZE) -> np.ndarray:
        """(N, S, S) or (N, S, S, 1) pixels 0-255 (any numeric dtype) -> (N, C) float32, in
        chunks of batch_size."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        side = self.image_size
        if pixels.shape[1:] != (side, side, 1):
            raise ValueError(f"{self.path} takes (N, {side}, {side}, 1) pixels, not {pixels.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        out = [self._predict_batch(np.ascontiguousarray(pixels[i:i + batch_size], dtype=np.float32))
               for i in range(0, len(pixels), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_outputs), np.float32)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 1) float32 -> (B, C) float32."""
        raise NotImplementedError


class KerasClassifier(Classifier):
    """A .keras (or .h5) model run by Keras in float32. `model`: one already loaded from
    `path` (export has it in hand), else it is loaded here."""

    backend = "keras"

    def __init__(self, path: Path, model=None):
        model = model if model is not None else emotion_model.load_model(path)
        in_shape, out_shape = model.input_shape, model.output_shape
        if isinstance(in_shape, list):
            raise FervggError(f"{path} has several inputs {in_shape}; expected one (None, S, S, 1)")
        if isinstance(out_shape, list) or len(out_shape) != 2 or not isinstance(out_shape[1], int):
            raise FervggError(f"{path} has output shape {out_shape}; expected one softmax over the classes (None, K)")
        super().__init__(path, check_gray_input(in_shape, path), out_shape[1])
        self.model = model
        try:
            self.model_crop = int(model.get_layer("center_crop").height)  # what the model itself reads
        except ValueError:
            self.model_crop = 0
        self._run = None

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        if self._run is None:  # one graph for any batch length, traced on first use
            import tensorflow as tf

            side = self.image_size
            self._run = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True,
                                    input_signature=[tf.TensorSpec([None, side, side, 1], tf.float32)])
        return np.asarray(self._run(batch), dtype=np.float32)


# ---------------------------------------------------------------- which model, which backend

class ModelChoice(NamedTuple):
    backend: str  # "keras" or "litert"
    file: Path  # what is loaded
    info_path: Path  # the .keras path whose sidecar describes it


def find_model(model: Path | None = None, *, models_dir: Path = config.MODELS_DIR, backend: str = "auto",
               notes: Notes | None = None) -> ModelChoice:
    """The file and backend to run. `model`: a .keras or .tflite file; None: the default model
    in models_dir, else the shipped one. "auto" prefers a current export: the .int8.tflite,
    then the float .tflite (see BACKENDS)."""
    notes = notes or print_note
    if backend not in BACKENDS:
        raise FervggError(f"`backend` {backend!r} is not one of {', '.join(BACKENDS)}")
    path = Path(model).expanduser() if model is not None else emotion_model.default_model_path(models_dir)
    if path.is_dir():
        raise emotion_model.folder_not_model(path)
    shipped = Path(config.PRETRAINED_MODEL)
    if model is None and not _model_or_export(path) and _model_or_export(shipped):
        notes(f"note: no model of your own in {models_dir}: using the shipped FER2013 model {shipped}")
        path = shipped
    if path.suffix == config.TFLITE_SUFFIX:
        if backend == "keras":
            raise FervggError(f"`backend` keras needs a .keras model, not {path}")
        return ModelChoice("litert", path, keras_for(path))
    if backend == "keras":
        return ModelChoice("keras", path, path)
    exports = {"int8": int8_path(path), "litert": path.with_suffix(config.TFLITE_SUFFIX)}
    if backend in exports:
        lite = exports[backend]
        if not lite.is_file():
            how = f"{EXPORT_HINT} and `int8_data` DATA_DIR" if backend == "int8" else EXPORT_HINT
            raise FervggError(f"no LiteRT model {lite}: {how} from {path}")
        if not export_is_current(path, lite):
            notes(f"warning: {lite} is older than {path}: re-{EXPORT_HINT}")
        return ModelChoice("litert", lite, path)
    for lite in exports.values():
        if lite.is_file() and export_is_current(path, lite):
            return ModelChoice("litert", lite, path)
    if not path.is_file():
        raise model_not_found(path)
    stale = [lite for lite in exports.values() if lite.is_file()]
    if stale:
        notes(f"note: {stale[0]} is older than {path}, using Keras (slower start); re-{EXPORT_HINT} to refresh it")
    return ModelChoice("keras", path, path)


def int8_path(model: Path) -> Path:
    """NAME.keras -> NAME.int8.tflite, its quantised export (fervgg.quantize)."""
    return Path(model).with_suffix(config.INT8_SUFFIX)


def keras_for(lite: Path) -> Path:
    """The .keras a .tflite or .int8.tflite was exported from (its sidecar describes both)."""
    return emotion_model.sidecar_path(lite).with_suffix(".keras")  # NAME.json names the family


def export_is_current(model: Path, lite: Path) -> bool:
    """Whether the .tflite (float or int8) was exported from this .keras: by file times, or,
    where those say otherwise (a git checkout writes files in any order), by the checksum
    export recorded in the sidecar."""
    if not model.is_file() or lite.stat().st_mtime >= model.stat().st_mtime:
        return True
    key = "litert_int8_export" if lite.name.endswith(config.INT8_SUFFIX) else "litert_export"
    try:
        record = loads_json(emotion_model.sidecar_path(model).read_text(encoding="utf-8"))[key]
        return record["file"] == lite.name and record["keras_sha256"] == sha256_file(model)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _model_or_export(model: Path) -> bool:
    return model.is_file() or model.with_suffix(config.TFLITE_SUFFIX).is_file() or int8_path(model).is_file()


# ---------------------------------------------------------------- opening

def open_classifier(model: Path | None = None, *, models_dir: Path = config.MODELS_DIR, backend: str = "auto",
                    threads: int | None = None, tta: bool = False, notes: Notes | None = None,
                    classes: Sequence[str] | None = None) -> Classifier:
    """The model, loaded and described (class names, input and crop size checked against its
    sidecar). `threads`: LiteRT's CPU threads (default all); `tta`: predictions are the mean
    over ten crops (tta.TenCrop); `notes`: where notes and warnings go (default stderr);
    `classes`: the names to assume for a model without a sidecar when the counts agree
    (evaluation passes the data's), else FER2013's 7 are assumed."""
    notes = notes or print_note
    choice = find_model(model, models_dir=models_dir, backend=backend, notes=notes)
    classifier = load(choice, threads)
    describe(classifier, choice.info_path, notes, classes)
    if tta:
        from fervgg.tta import TenCrop

        return TenCrop(classifier)
    return classifier


def load(choice: ModelChoice, threads: int | None = None) -> Classifier:
    """The backend's classifier for a ModelChoice (class names not filled in yet)."""
    if choice.backend == "litert":
        from fervgg.litert_runtime import LiteRTClassifier

        return LiteRTClassifier(choice.file, threads=threads)
    return KerasClassifier(choice.file)


def describe(classifier: Classifier, info_path: Path, notes: Notes | None = None,
             classes: Sequence[str] | None = None) -> Classifier:
    """Fill in class_names and crop_size from the sidecar of `info_path` (see open_classifier),
    after checking that it describes this model: FervggError if not."""
    notes = notes or print_note
    n, side = classifier.num_outputs, emotion_model.sidecar_path(info_path)
    if side.is_file():
        info = emotion_model.model_info(info_path, n)
        if len(info.class_names) != n:
            raise FervggError(f"{side} lists {len(info.class_names)} classes but {classifier.path} has {n} outputs")
        if info.image_size != classifier.image_size:
            raise FervggError(f"{side} says image size {info.image_size} but {classifier.path} takes "
                              f"{classifier.image_size}x{classifier.image_size}")
        names, crop = info.class_names, info.crop_size
    elif classes is not None and len(classes) == n:
        names, crop = list(classes), 0
        notes(f"warning: {side} is missing: assuming the model's {n} outputs are the data's classes in order")
    else:
        info = emotion_model.model_info(info_path, n)  # FER2013's 7 classes, or a FervggError
        names, crop = info.class_names, 0
        notes(f"warning: {info.assumed} ({', '.join(names)})")
    model_crop = getattr(classifier, "model_crop", None)  # Keras models show theirs
    if model_crop is not None:
        if side.is_file() and model_crop != crop:
            raise FervggError(f"{side} says crop size {crop} but {classifier.path} reads a "
                              f"{model_crop}x{model_crop} centre crop")
        crop = model_crop
    classifier.class_names, classifier.crop_size = list(names), crop
    return classifier

