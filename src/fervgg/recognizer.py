"""The Python API: emotions of the faces in photos, face crops and videos.

    from fervgg import EmotionRecognizer
    rec = EmotionRecognizer()                    # shipped model, fastest backend, default detector
    faces = rec.predict("photo.jpg")             # a path, a PIL image or a numpy array
    faces[0].emotion, faces[0].confidence, faces[0].probabilities, faces[0].box

Images are decoded with the same limits as the scripts (decompression bombs, huge
files), faces found by fervgg.faces, cropped square with a margin, and classified in
batches. No face is an empty list; a bad input raises FervggError (its message is the
line the command line prints).

A recognizer may be shared by threads: decoding and cropping run in parallel, face detection
and classification one call at a time (their LiteRT interpreters are not thread-safe;
detectors are shared by the whole process, unless own_detector). For calls that run truly
in parallel, give each thread a recognizer of its own with own_detector=True (the service's
workers do).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from fervgg import config, imaging
from fervgg.classifiers import open_classifier
from fervgg.common import FervggError
from fervgg.inputs import refuse_url

Box = tuple[int, int, int, int]
CHANNEL_ORDERS = ("rgb", "bgr")
_DETECTION = threading.Lock()  # fervgg.faces keeps one detector per process


@dataclass(frozen=True)
class Face:
    """One face: its box (x, y, w, h in the image's pixels), the likeliest emotion, its
    probability, and every class probability."""
    box: Box
    emotion: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        x, y, w, h = self.box
        return {"box": {"x": x, "y": y, "w": w, "h": h}, "emotion": self.emotion,
                "confidence": self.confidence, "probabilities": dict(self.probabilities)}


def to_fer_format(faces: list[Face]) -> list[dict]:
    """The `fer` package's format, `[{"box": [x, y, w, h], "emotions": {...}}]`, so code
    written for `fer.FER().detect_emotions(img)` works unchanged."""
    return [{"box": [int(v) for v in f.box], "emotions": {k: float(v) for k, v in f.probabilities.items()}}
            for f in faces]


@dataclass
class PreparedImage:
    """An image ready for classification: its face boxes (file pixels) and crops."""
    name: str
    boxes: list[Box]
    crops: list[np.ndarray]  # (S, S) uint8, one per box
    face_found: bool | None  # True: detected; False: none found; None: detection off
    image: Image.Image | None = None  # the decoded RGB image, when kept (annotation)
    probs: list[np.ndarray] = field(default_factory=list)


class EmotionRecognizer:
    """Loads a model once; predicts on photos, crops and videos.

    model: a .keras or .tflite file of ours (default: the shipped FER2013 model; or, with
    models_dir, the model trained there, as the scripts choose it).
    backend: "auto" (LiteRT when a current export exists, the .int8.tflite first: fast, no
    TensorFlow), "int8", "litert" (the float .tflite), "keras".
    detector: a face detector of fervgg.faces.DETECTORS, or None: every image is one face
    (FER-style crops). tta: average ten crops per face on photos (None: config.PHOTO_TTA);
    videos always use one view.
    max_megapixels: images larger than this once decoded are refused (decompression bombs).
    own_detector: a RetinaFace of this recognizer's own (with its `threads`), not the one the
    process shares: recognizers used by different threads then detect at the same time (the
    other detectors stay shared by the process).
    """

    def __init__(self, model: str | Path | None = None, *, models_dir: str | Path | None = None,
                 backend: str = "auto", detector: str | None = config.DETECTOR, tta: bool | None = None,
                 threads: int | None = None, max_megapixels: float = config.MAX_IMAGE_PIXELS / 1e6, notes=None,
                 own_detector: bool = False):
        from fervgg import faces

        if detector is not None and detector not in faces.DETECTORS:
            raise FervggError(f"unknown detector {detector!r}: choose one of {', '.join(faces.DETECTORS)}")
        if not max_megapixels > 0:
            raise FervggError(f"max_megapixels must be above 0, not {max_megapixels}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise FervggError(f"threads must be a whole number of at least 1 (None: every core), not {threads!r}")
        if model is not None:
            model = Path(model).expanduser()
        elif models_dir is None:
            model = Path(config.PRETRAINED_MODEL)
        where = {"models_dir": Path(models_dir).expanduser()} if models_dir is not None else {}
        self.classifier = open_classifier(model, **where, backend=backend, threads=threads,
                                          tta=config.PHOTO_TTA if tta is None else tta,
                                          notes=notes or (lambda text: None))
        self._lock = threading.Lock()  # one classification at a time
        self._other_tta = None  # the classifier for classify(tta=...) against this instance's setting
        self.detector = detector
        self.max_pixels = int(max_megapixels * 1e6)
        self._faces = faces
        self._engine, self._detection = None, _DETECTION
        if detector == "retinaface" and own_detector:
            from fervgg import retinaface

            self._engine, self._detection = retinaface.RetinaFace(threads=threads), threading.Lock()
        elif detector is not None:
            faces.load_detector(detector)  # a missing piece fails now, not at the first photo

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    # -------------------------------------------------------------------------- photos

    def predict(self, image, *, detect: bool = True, channels: str = "rgb") -> list[Face]:
        """The faces of one image (a path, the bytes of an image file or a binary file object, a PIL
        image or a numpy array, RGB or gray; channels="bgr" for OpenCV frames). detect=False: the
        image is one face."""
        return self.predict_many([image], detect=detect, channels=channels)[0]

    def predict_many(self, images: Iterable, batch_size: int = config.EVAL_BATCH_SIZE, *, detect: bool = True,
                     channels: str = "rgb") -> list[list[Face]]:
        """One list of faces per image, the faces of all images classified in batches."""
        prepared = [self.prepare(image, detect=detect, channels=channels) for image in images]
        self.classify(prepared, batch_size)
        return [self.faces_of(p) for p in prepared]

    def predict_crops(self, crops, batch_size: int = config.EVAL_BATCH_SIZE) -> list[Face]:
        """Ready-made face crops, (N, S, S) or (N, S, S, 1) gray pixels 0-255 or 0-1 floats (S: the model's
        input size, 48), no detection; each box is the whole crop."""
        crops = np.asarray(crops)
        if crops.ndim == 4 and crops.shape[-1] == 1:
            crops = crops[..., 0]
        size = self.image_size
        if crops.ndim != 3 or crops.shape[1:] != (size, size):
            raise FervggError(f"face crops must be (N, {size}, {size}) or (N, {size}, {size}, 1) gray pixels, "
                              f"not an array of shape {crops.shape}")
        pixels = _as_uint8(crops, "face crops")
        if not len(pixels):
            return []
        with self._lock:
            probs = self.classifier.predict(pixels[..., None], batch_size)
        return [self._face((0, 0, size, size), p) for p in probs]

    def prepare(self, image, *, detect: bool = True, channels: str = "rgb", whole_if_none: bool = False,
                keep_image: bool = False) -> PreparedImage:
        """Decode (with limits), find the faces and crop them; no classification yet.
        whole_if_none: with no face found, classify the whole image (the command line's choice)."""
        rgb, name, scale = self._decode(image, channels, full_size=keep_image)
        width, height = rgb.size
        detect = detect and self.detector is not None
        if detect:
            with self._detection:
                boxes = self._faces.detect_faces(rgb, self.detector, engine=self._engine)
        else:
            boxes = [(0, 0, width, height)]
        found = True if detect else None
        if not boxes and whole_if_none:
            boxes, found = [(0, 0, width, height)], False
        crops = crop_faces(rgb, boxes, self.image_size, margin=config.FACE_MARGIN if found else 0.0)
        if scale != 1.0:  # boxes in the file's pixels, whatever size it was decoded at
            boxes = [tuple(round(v * scale) for v in box) for box in boxes]
        return PreparedImage(name, boxes, crops, found, rgb if keep_image else None)

    def classify(self, prepared: list[PreparedImage], batch_size: int = config.EVAL_BATCH_SIZE, *,
                 tta: bool | None = None) -> None:
        """Fills each PreparedImage's probs, all faces in batches of batch_size. tta: ten-crop
        TTA on or off for this call (default: as the recognizer was made)."""
        crops = [c for p in prepared for c in p.crops]
        if not crops:
            return
        with self._lock:
            probs = self._classifier(tta).predict(np.stack(crops)[..., None], batch_size)
        at = 0
        for p in prepared:
            p.probs = list(probs[at:at + len(p.crops)])
            at += len(p.crops)

    def _classifier(self, tta: bool | None):
        """This recognizer's classifier, or the same model with TTA switched (sharing its weights)."""
        from fervgg.tta import TenCrop

        if tta is None or tta == isinstance(self.classifier, TenCrop):
            return self.classifier
        if self._other_tta is None:
            tenfold = isinstance(self.classifier, TenCrop)
            self._other_tta = self.classifier.inner if tenfold else TenCrop(self.classifier)
        return self._other_tta

    def faces_of(self, prepared: PreparedImage) -> list[Face]:
        return [self._face(box, p) for box, p in zip(prepared.boxes, prepared.probs)]

    def _face(self, box: Box, probs: np.ndarray) -> Face:
        best = int(np.argmax(probs))
        return Face(tuple(int(v) for v in box), self.class_names[best], round(float(probs[best]), 6),
                    {n: round(float(v), 6) for n, v in zip(self.class_names, probs)})

    def _decode(self, image, channels: str, full_size: bool) -> tuple[Image.Image, str, float]:
        """(RGB image, a name for messages, file pixels per decoded pixel)."""
        if channels not in CHANNEL_ORDERS:
            raise FervggError(f"channels must be one of {', '.join(CHANNEL_ORDERS)}, not {channels!r}")
        if hasattr(image, "read"):  # an open file, io.BytesIO, a web framework's upload
            image = _read_stream(image)
        if isinstance(image, (str, Path, bytes, bytearray, memoryview)):  # a file, or its contents (an upload)
            if isinstance(image, str):
                _check_path_text(image)
            source = Path(image).expanduser() if isinstance(image, (str, Path)) else image
            if isinstance(source, Path) and source.is_dir():
                raise FervggError(f"{source} is a folder: predict takes one image (predict_many takes several)")
            where = f"{source}: " if isinstance(source, Path) else ""
            # Big JPEGs decode at a fraction of their size: faces need far less than 20 Mpx.
            try:
                decoded = imaging.open_image(source, self.max_pixels,
                                             draft_size=None if full_size else config.DETECT_MAX_SIDE)
                return imaging.to_rgb(decoded), str(source) if where else "image", imaging.decoded_scale(decoded)
            except imaging.BadImage as exc:
                raise imaging.BadImage(f"{where}{exc}") from None
            except (OSError, ValueError) as exc:
                raise imaging.BadImage(f"{where}cannot convert its pixels to RGB ({exc})") from None
        if isinstance(image, Image.Image):
            self._check_size(*image.size)
            try:
                return imaging.to_rgb(image), "image", 1.0
            except (OSError, ValueError) as exc:
                raise imaging.BadImage(f"cannot convert {image.mode} pixels to RGB ({exc})") from None
        if isinstance(image, np.ndarray):
            return self._from_array(image, channels), "array", 1.0
        raise FervggError(f"an image must be a path, a PIL image or a numpy array (or an image file's bytes or "
                          "a binary file object), "
                          f"not {type(image).__name__}")

    def _from_array(self, array: np.ndarray, channels: str) -> Image.Image:
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise FervggError(f"an image array must be (H, W) gray or (H, W, 3|4) colour, not shape {array.shape}")
        self._check_size(array.shape[1], array.shape[0])
        pixels = _as_uint8(array, "an image array")
        if pixels.ndim == 2:
            return Image.fromarray(pixels, "L").convert("RGB")
        pixels = pixels[..., :3]  # alpha dropped
        if channels == "bgr":
            pixels = pixels[..., ::-1]
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")

    def _check_size(self, width: int, height: int) -> None:
        if width < 1 or height < 1:
            raise imaging.BadImage(f"empty image ({width}x{height})")
        if width * height > self.max_pixels:
            raise imaging.BadImage(f"image too large ({imaging.too_large(width, height, self.max_pixels)})")

    # -------------------------------------------------------------------------- video

    def analyse_video(self, source: str | int | Path, *, every: int = 1, fps: float | None = None,
                      smooth: float = 0.0, detect_every: int = config.VIDEO_DETECT_EVERY,
                      detect_side: int = config.VIDEO_DETECT_SIDE) -> Iterator[dict]:
        """Rows for every tracked face of a video file or camera (an index such as 0), in
        frame order, as the command line writes them: frame, time_s, track, x, y, w, h,
        emotion, confidence and every class probability. One view per face, whatever `tta`."""
        if every < 1 or detect_every < 1 or detect_side < 64 or not 0 <= smooth < 3600 \
                or (fps is not None and not 0 < fps < 1000):
            raise FervggError("video settings out of range: `every` and `detect_every` >= 1, `detect_side` >= 64, "
                              "0 <= `smooth` < 3600, 0 < `fps` < 1000")
        from fervgg import video_analysis as video

        settings = video.Settings(detector=self.detector, detect_every=detect_every, detect_side=detect_side,
                                  smooth_s=smooth)
        stream = video.open_video(str(source), self.max_pixels)
        try:
            analysis = video.FrameAnalysis(stream, self._classifier(False), settings, every, fps)
            for step in analysis.steps():
                yield from (video.row_record(row, self.class_names) for row in step.rows)
            yield from (video.row_record(row, self.class_names) for row in analysis.flush())
        finally:
            stream.capture.release()


def crop_faces(image: Image.Image, boxes: list[Box], size: int, margin: float = config.FACE_MARGIN) -> list[np.ndarray]:
    """Square crops around face boxes (a margin added on each side), as (size, size) gray uint8."""
    from fervgg.faces import crop_box

    width, height = image.size
    return [imaging.gray_array(image.crop(crop_box(b, width, height, margin)), size) for b in boxes]


def _check_path_text(text: str) -> None:
    if not text.strip():
        raise FervggError("an empty string is not an image path")
    refuse_url(text)


def _read_stream(stream) -> bytes:
    """The contents of a binary file object, read to at most one byte past the file size limit
    (so that an endless or huge stream is refused as too large, not held in memory)."""
    data = stream.read(config.MAX_FILE_BYTES + 1)
    if isinstance(data, str):
        raise FervggError("an image file object must be opened in binary mode ('rb'), not text mode")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FervggError(f"an image file object's read() gave {type(data).__name__}, not bytes")
    return data


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Pixels of any real dtype as uint8: 0-255, or 0-1 for floats that stay within it (what
    matplotlib's imread and scikit-image give); floats are rounded and clipped."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise FervggError(f"{what} must hold numbers 0-255, not {array.dtype}")
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise FervggError(f"{what} holds NaN or infinite values")
    if np.issubdtype(array.dtype, np.floating) and values.size and 0 <= values.min() and values.max() <= 1:
        values = values * 255  # a 0-255 image this dark would be black either way
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
