"""Predict the emotion of every face in photos (or of ready-made face crops).

    python scripts/predict_emotion.py --image_path photo.jpg
    python scripts/predict_emotion.py --image_path photos/ "shots/*.png" --json
    python scripts/predict_emotion.py --no-detect --image_path fer_crops/ --csv > out.csv
    python scripts/predict_emotion.py --image_path group.jpg --annotate annotated/

Each PATH is a file, a folder (searched recursively for image files) or a quoted glob
pattern. Faces are found with OpenCV's Haar cascades (--detector mtcnn for TensorFlow's
MTCNN), cropped square with a margin and classified in a few large batches. A photo
without a detectable face is classified as a whole and marked "face_found": false.

Backend: with --backend auto (the default) the exported LiteRT model <model>.tflite is
used when it exists and is not older than the .keras model (create it with
scripts/export_model.py); it starts in well under a second because TensorFlow is never
imported. Otherwise the .keras model is loaded with Keras.

Output, one record per face: the emotion, its probability, the top 3, and the face box
(x, y, w, h in pixels of the upright image). Text by default; --json, --jsonl or --csv
for machines (on stdout; messages go to stderr). Files that cannot be read as images
are reported on stderr, one line each; the others are still predicted, and the exit
code is then 1.

Video (a file in any format OpenCV reads, or a camera index such as 0):

    python scripts/predict_emotion.py --video clip.mp4 --csv > rows.csv
    python scripts/predict_emotion.py --video clip.mp4 --plot emotions.png --annotate out.mp4
    python scripts/predict_emotion.py --video 0 --fps 5 --jsonl

Every face is tracked (a stable "track" id per person); rows hold frame, time_s, track,
box, emotion, confidence and every class probability (--csv or --jsonl on stdout). A
per-person summary goes to stdout as text (or JSON with --json), or to stderr when rows
are on stdout. Ctrl+C stops cleanly: every output written so far is complete.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli import HelpFormatter, number, run_cli
from fervgg import config
from fervgg import imaging
from fervgg import tta
from fervgg.classifiers import BACKENDS, KerasClassifier, choose_model, class_names_for, load_classifier  # noqa: F401
from fervgg.common import atomic_write_bytes, FervggError, printable, writable_folder
DETECTORS = ("opencv", "mtcnn")  # faces.DETECTORS; repeated so that --help does not import cv2
TOP_K = 3
GLOB_CHARS = set("*?[")
VIDEO_ONLY = ("every", "fps", "smooth", "plot", "detect_every", "detect_side")
CSV_HEADER = ["image", "face", "face_found", "x", "y", "w", "h", "emotion", "confidence",
              "top2", "top2_probability", "top3", "top3_probability"]
# Box and label colours, one per class (cycled if a model has more classes).
PALETTE = ["#e6194b", "#3cb44b", "#f58231", "#ffe119", "#4363d8", "#911eb4", "#42d4f4",
           "#f032e6", "#bfef45", "#fabed4"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image_path", "--image-path", dest="image_paths", nargs="+",
                      metavar="PATH", help="image files, folders (recursive) or quoted glob patterns")
    what.add_argument("--video", metavar="FILE|CAMERA",
                      help="a video file, or a camera index such as 0 (see Video above)")
    p.add_argument("--model", type=Path, default=None,
                   help="the .keras model (or its .tflite); default: fine_tuned_model.keras in "
                        "--models-dir if present, else best_model.keras")
    p.add_argument("--models-dir", type=Path, default=config.MODELS_DIR,
                   help="where the default model is looked for")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: <model>.tflite via LiteRT if present and up to date, else Keras")
    p.add_argument("--detector", choices=DETECTORS, default="opencv",
                   help="face detector: opencv (Haar cascades, fast start) or mtcnn (TensorFlow)")
    p.add_argument("--no-detect", action="store_true",
                   help="each image is one face already (FER-style crops): no face detection")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON array of records on stdout")
    out.add_argument("--jsonl", action="store_true", help="JSON lines: one record per line on stdout")
    out.add_argument("--csv", action="store_true", help="CSV with a header on stdout")
    p.add_argument("--annotate", type=Path, default=None, metavar="DIR|FILE",
                   help="photos: write a copy of each image with boxes and labels into DIR; "
                        "video: write the annotated video to FILE (.mp4, .mov, .avi, .mkv)")
    v = p.add_argument_group("video")
    sampling = v.add_mutually_exclusive_group()
    sampling.add_argument("--every", type=int, default=1, metavar="N",
                          help="analyse every Nth frame (1: every frame)")
    sampling.add_argument("--fps", type=float, default=None, metavar="F",
                          help="analyse F frames per second of video time")
    v.add_argument("--smooth", type=float, default=0.0, metavar="SECONDS",
                   help="smooth each person's probabilities over time (exponential, this time "
                        "constant; 0: off)")
    v.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="plot the emotion probabilities over time, one panel per person")
    v.add_argument("--detect-every", type=int, default=config.VIDEO_DETECT_EVERY, metavar="N",
                   help="detect faces on every Nth analysed frame (and at cuts), track them in "
                        "between (1: detect on every frame)")
    v.add_argument("--detect-side", type=int, default=config.VIDEO_DETECT_SIDE, metavar="PIXELS",
                   help="frames are downscaled to this longest side for detection (larger finds "
                        "smaller faces, slower)")
    p.add_argument("--batch-size", type=int, default=config.EVAL_BATCH_SIZE,
                   help="faces per model call")
    p.add_argument("--tta", action="store_true",
                   help="photos: average each face's prediction over ten crops (corners, centre, "
                        "mirrored): a little more accurate, ten times the classifier work")
    p.add_argument("--max-megapixels", type=number(float, above=0, high=10_000),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="refuse images (and video frames) larger than this when decoded, against "
                        "decompression bombs; big JPEGs decode at reduced size and rarely reach it")
    p.add_argument("--threads", type=number(int, 1, 256), default=None,
                   help="LiteRT CPU threads (default: all available cores)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.no_detect and args.detector != "opencv":
        p.error("--no-detect and --detector exclude each other")
    if args.video is None:
        used = [f"--{name.replace('_', '-')}" for name in VIDEO_ONLY if getattr(args, name) != p.get_default(name)]
        if used:
            p.error(f"{', '.join(used)}: only with --video")
    else:
        if args.no_detect or args.tta:
            p.error("--no-detect and --tta are for photos, not --video")
        if args.every < 1 or args.detect_every < 1:
            p.error("--every and --detect-every must be at least 1")
        if args.fps is not None and not (0 < args.fps < 1000):
            p.error("--fps must be above 0 (and below 1000)")
        if not (0 <= args.smooth < 3600):
            p.error("--smooth must be 0 or more seconds")
        if args.detect_side < 64:
            p.error("--detect-side must be at least 64 pixels")
    return args


# ------------------------------------------------------------------------------ inputs

def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in config.IMAGE_EXTENSIONS


def image_files_in(folder: Path) -> list[Path]:
    return [p for p in imaging.list_files(folder) if is_image_name(p)]


def resolve_inputs(specs: list[str]) -> list[Path]:
    """Files, folders and glob patterns -> image files, in order, without duplicates.

    A file named explicitly is always tried (its content decides, not its extension);
    folders and patterns only contribute files with an image extension.
    """
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = image_files_in(path)
            if not found:
                raise FervggError(f"no image files ({', '.join(config.IMAGE_EXTENSIONS)}) in folder {path}")
            files.extend(found)
        elif GLOB_CHARS & set(spec):
            found = []
            for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
                match = Path(match)
                if match.is_dir():
                    found.extend(image_files_in(match))
                elif match.is_file() and is_image_name(match) and not imaging.is_hidden(match):
                    found.append(match)
            if not found:
                raise FervggError(f"no image files match the pattern {spec!r}")
            files.extend(found)
        elif path.exists():
            raise FervggError(f"not a regular file or folder: {path}")
        else:
            raise FervggError(f"no such file or folder: {path}")
    unique, seen = [], set()
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


# ------------------------------------------------------------------------------ faces

@dataclass
class Photo:
    path: Path
    boxes: list[tuple[int, int, int, int]]
    face_found: bool | None  # None: --no-detect (the image is the face)
    image: object = None  # the RGB image, kept only when annotating
    probs: list = field(default_factory=list)


def prepare(path: Path, args, image_size: int) -> tuple[Photo, list[np.ndarray]]:
    """Decode one file, find its faces and crop them; raises imaging.BadImage."""
    # Big JPEGs decode at a fraction of their size (faces need far less than 20 Mpx), except
    # when annotating: the annotated copy keeps the photo's own resolution.
    image = imaging.open_image(path, draft_size=None if args.annotate else config.DETECT_MAX_SIDE)
    scale = imaging.decoded_scale(image)
    try:
        rgb = imaging.to_rgb(image)
    except (OSError, ValueError) as exc:
        raise imaging.BadImage(f"cannot convert {image.mode} pixels to RGB ({exc})") from None
    width, height = rgb.size
    whole = (0, 0, width, height)
    if args.no_detect:
        boxes, found, crops = [whole], None, [rgb]
    else:
        from fervgg import faces

        boxes = faces.detect_faces(rgb, args.detector)
        if boxes:
            found = True
            crops = [rgb.crop(faces.crop_box(b, width, height)) for b in boxes]
        else:
            boxes, found, crops = [whole], False, [rgb]
    arrays = [imaging.gray_array(c, image_size) for c in crops]
    if scale != 1.0:  # boxes in the file's pixels, whatever size it was decoded at
        boxes = [tuple(round(v * scale) for v in box) for box in boxes]
    photo = Photo(path, boxes, found, rgb if args.annotate else None)
    return photo, arrays


# ------------------------------------------------------------------------------ output

def records_of(photo: Photo, class_names: list[str]) -> list[dict]:
    records = []
    for i, (box, p) in enumerate(zip(photo.boxes, photo.probs), start=1):
        order = np.argsort(-p, kind="stable")[:TOP_K]
        top = [{"emotion": class_names[j], "probability": round(float(p[j]), 6)} for j in order]
        records.append({
            "image": str(photo.path),
            "face": i,
            "faces_in_image": len(photo.boxes),
            "face_found": photo.face_found,
            "box": {"x": box[0], "y": box[1], "w": box[2], "h": box[3]},
            "emotion": top[0]["emotion"],
            "confidence": top[0]["probability"],
            "top3": top,
            "probabilities": {n: round(float(v), 6) for n, v in zip(class_names, p)},
        })
    return records


def text_line(rec: dict) -> str:
    b = rec["box"]
    if rec["face_found"] is False:
        where = "no face found, whole image"
    elif rec["face_found"] is None:
        where = "whole image"
    else:
        where = f"face {rec['face']}/{rec['faces_in_image']} at x={b['x']} y={b['y']} {b['w']}x{b['h']}"
    others = ", ".join(f"{t['emotion']} {t['probability']:.1%}" for t in rec["top3"][1:])
    line = f"{printable(rec['image'])}  [{where}]  {rec['emotion']} {rec['confidence']:.1%}"
    return line + (f"  ({others})" if others else "")


def csv_row(rec: dict) -> list:
    b, top = rec["box"], rec["top3"] + [{"emotion": "", "probability": ""}] * TOP_K
    found = "" if rec["face_found"] is None else str(rec["face_found"]).lower()
    return [rec["image"], rec["face"], found, b["x"], b["y"], b["w"], b["h"], rec["emotion"],
            f"{rec['confidence']:.6f}", top[1]["emotion"], _prob(top[1]["probability"]),
            top[2]["emotion"], _prob(top[2]["probability"])]


def _prob(value) -> str:
    return f"{value:.6f}" if value != "" else ""


class Writer:
    """Streams records to stdout in the chosen format."""

    def __init__(self, args):
        self.mode = "json" if args.json else "jsonl" if args.jsonl else "csv" if args.csv else "text"
        self.all: list[dict] = []
        self._csv = None
        if self.mode == "csv":
            import csv

            self._csv = csv.writer(sys.stdout, lineterminator="\n")
            self._csv.writerow(CSV_HEADER)

    def write(self, records: list[dict]) -> None:
        for rec in records:
            if self.mode == "json":
                self.all.append(rec)
            elif self.mode == "jsonl":
                print(json.dumps(rec))
            elif self.mode == "csv":
                self._csv.writerow(csv_row(rec))
            else:
                print(text_line(rec))
        sys.stdout.flush()

    def close(self) -> None:
        if self.mode == "json":
            print(json.dumps(self.all, indent=1))


def annotated_name(path: Path, used: set[str]) -> str:
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    name, n = f"{path.stem}{ext}", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}{ext}"
    used.add(name)
    return name


def draw_annotations(photo: Photo, records: list[dict], class_names: list[str]):
    """A copy of the photo with a box and a filled label per face, sized to the image."""
    from PIL import ImageDraw, ImageFont

    image = photo.image.copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(max(width, height) / 300))
    font_size = max(12, round(max(width, height) / 40))
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow without FreeType: small bitmap font
        font = ImageFont.load_default()
    for rec in records:
        b = rec["box"]
        x0, y0, x1, y1 = b["x"], b["y"], b["x"] + b["w"] - 1, b["y"] + b["h"] - 1
        colour = PALETTE[class_names.index(rec["emotion"]) % len(PALETTE)]
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        label = f"{rec['emotion']} {rec['confidence']:.0%}"
        if rec["face_found"] is False:
            label += " (no face found)"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(2, font_size // 5)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        lx = min(max(0, x0), max(0, width - tw))
        ly = y0 - th if y0 - th >= 0 else min(y0 + line, max(0, height - th))  # above the box, else inside
        draw.rectangle((lx, ly, lx + tw, ly + th), fill=colour)
        text_colour = "black" if colour in ("#ffe119", "#42d4f4", "#bfef45", "#fabed4", "#3cb44b") else "white"
        draw.text((lx + pad - left, ly + pad - top), label, fill=text_colour, font=font)
    return image


def save_annotated(image, out_dir: Path, name: str) -> None:
    fmt = "JPEG" if name.endswith(".jpg") else "PNG"
    kwargs = {"quality": 92} if fmt == "JPEG" else {}
    atomic_write_bytes(out_dir / name, lambda f: image.save(f, format=fmt, **kwargs))


# ------------------------------------------------------------------------------ main

def predict_video(args) -> int:
    from fervgg import video_analysis as video

    source = video.open_video(args.video)  # a bad source fails before the model loads
    backend, model_file, info_path = choose_model(args)
    classifier = load_classifier(backend, model_file, args.threads)
    class_names = class_names_for(info_path, classifier)
    from fervgg import faces

    faces.load_detector(args.detector)
    output = "json" if args.json else "jsonl" if args.jsonl else "csv" if args.csv else None
    settings = video.Settings(detector=args.detector, detect_every=args.detect_every,
                              detect_side=args.detect_side, smooth_s=args.smooth)
    options = video.VideoOptions(source=args.video, every=args.every, sample_fps=args.fps, output=output,
                                 plot=args.plot, annotate=args.annotate, settings=settings)
    print(f"model {model_file} ({backend})", file=sys.stderr)
    return video.analyse_video(options, classifier, class_names, source)


def predict_photos(args) -> int:
    files = resolve_inputs(args.image_paths)
    if args.annotate:  # before the model loads: a bad folder fails at once
        writable_folder(args.annotate, "--annotate")
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FervggError(f"cannot create the --annotate folder {args.annotate}: {exc.strerror or exc}") from None
    backend, model_file, info_path = choose_model(args)
    start = time.perf_counter()
    classifier = load_classifier(backend, model_file, args.threads)
    class_names = class_names_for(info_path, classifier)
    if not args.no_detect:
        from fervgg import faces

        faces.load_detector(args.detector)
    if len(files) > 1 or args.annotate:
        print(f"{len(files)} image(s), model {model_file} ({backend})", file=sys.stderr)

    writer = Writer(args)
    failed = not_annotated = 0
    used_names: set[str] = set()
    pending: list[Photo] = []
    pending_arrays: list[np.ndarray] = []

    def flush() -> None:
        if not pending:
            return
        faces_batch = np.stack(pending_arrays)[..., None]
        if args.tta:
            probs = tta.predict_averaged(lambda views: classifier.predict(views, args.batch_size), faces_batch)
        else:
            probs = classifier.predict(faces_batch, args.batch_size)
        at = 0
        for photo in pending:
            photo.probs = list(probs[at:at + len(photo.boxes)])
            at += len(photo.boxes)
            records = records_of(photo, class_names)
            writer.write(records)
            if args.annotate:
                image = draw_annotations(photo, records, class_names)
                try:  # a full disk costs this copy, never the predictions
                    save_annotated(image, args.annotate, annotated_name(photo.path, used_names))
                except OSError as exc:
                    nonlocal not_annotated
                    not_annotated += 1
                    _message(progress, f"error: {printable(photo.path)}: annotated copy not written "
                                       f"({exc.strerror or exc})")
                photo.image = None
        pending.clear()
        pending_arrays.clear()

    progress = _progress(files)
    for path in progress:
        try:
            photo, arrays = prepare(path, args, classifier.image_size)
        except imaging.BadImage as exc:
            failed += 1
            _message(progress, f"error: {printable(path)}: {exc} (skipped)")
            continue
        if photo.face_found is False:
            _message(progress, f"note: {printable(path)}: no face found, classifying the whole image")
        pending.append(photo)
        pending_arrays.extend(arrays)
        if len(pending_arrays) >= args.batch_size:
            flush()
    flush()
    writer.close()
    done = len(files) - failed
    if len(files) > 1 or failed:
        print(f"{done} of {len(files)} image(s) predicted in {time.perf_counter() - start:.1f} s"
              + (f"; {failed} could not be read" if failed else ""), file=sys.stderr)
    if args.annotate and done:
        print(f"annotated images in {args.annotate}"
              + (f"; {not_annotated} could not be written" if not_annotated else ""), file=sys.stderr)
    return 1 if failed or not_annotated else 0


def _progress(files: list[Path]):
    if len(files) < 50 or not sys.stderr.isatty():
        return files
    from tqdm import tqdm

    return tqdm(files, desc="images", unit="img", file=sys.stderr, leave=False)


def _message(progress, text: str) -> None:
    if hasattr(progress, "write"):
        progress.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    imaging.set_max_pixels(args.max_megapixels * 1e6)
    return predict_video(args) if args.video is not None else predict_photos(args)


if __name__ == "__main__":
    run_cli(main)
