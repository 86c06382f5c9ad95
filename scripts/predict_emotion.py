"""Predict the emotion of every face in photos (or of ready-made face crops).

    python scripts/predict_emotion.py --image_path photo.jpg
    python scripts/predict_emotion.py --image_path photos/ "shots/*.png" --json
    python scripts/predict_emotion.py --no-detect --image_path fer_crops/ --csv > out.csv
    python scripts/predict_emotion.py --image_path group.jpg --annotate annotated/

Each PATH is a file, a folder (searched recursively for image files) or a quoted glob
pattern. Faces are found with RetinaFace (a 1.7 MB LiteRT model; --detector opencv for
Haar cascades, mtcnn for TensorFlow's MTCNN), cropped square with a margin and classified
in a few large batches. A photo without a detectable face is classified as a whole and
marked "face_found": false.

Backend: with --backend auto (the default) an exported LiteRT model is used when it exists
and is not older than the .keras model: <model>.int8.tflite (quantised), else <model>.tflite
(create them with scripts/export_model.py). It starts in well under a second because
TensorFlow is never imported. Otherwise the .keras model is loaded with Keras.

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
import sys
import time
from pathlib import Path


from cli import HelpFormatter, as_flags, number, run_cli
from fervgg import config, drawing, records
from fervgg.classifiers import BACKEND_HELP, BACKENDS
from fervgg.common import FervggError, atomic_write_bytes, printable, writable_folder
from fervgg.faces import DETECTORS
from fervgg.inputs import check_output_folder, resolve_inputs
from fervgg.recognizer import EmotionRecognizer, PreparedImage

VIDEO_ONLY = ("every", "fps", "smooth", "plot", "detect_every", "detect_side")


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
                   help=BACKEND_HELP)
    p.add_argument("--detector", choices=DETECTORS, default=config.DETECTOR,
                   help="face detector: retinaface (RetinaFace on LiteRT), opencv (Haar cascades) or "
                        "mtcnn (TensorFlow)")
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
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="photos: average each face's prediction over ten crops (corners, centre, "
                        "mirrored): more accurate, ten times the classifier work (default: "
                        f"{'on' if config.PHOTO_TTA else 'off'}; video always uses one view)")
    p.add_argument("--max-megapixels", type=number(float, above=0, high=10_000),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="refuse images (and video frames) larger than this when decoded, against "
                        "decompression bombs; big JPEGs decode at reduced size and rarely reach it")
    p.add_argument("--threads", type=number(int, 1, 256), default=None,
                   help="LiteRT CPU threads (default: all available cores)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.no_detect and args.detector != config.DETECTOR:
        p.error("--no-detect and --detector exclude each other")
    if args.video is None:
        used = [f"--{name.replace('_', '-')}" for name in VIDEO_ONLY if getattr(args, name) != p.get_default(name)]
        if used:
            p.error(f"{', '.join(used)}: only with --video")
    else:
        if args.no_detect or args.tta is not None:
            p.error("--no-detect and --tta/--no-tta are for photos, not --video")
        if args.every < 1 or args.detect_every < 1:
            p.error("--every and --detect-every must be at least 1")
        if args.fps is not None and not (0 < args.fps < 1000):
            p.error("--fps must be above 0 (and below 1000)")
        if not (0 <= args.smooth < 3600):
            p.error("--smooth must be 0 or more seconds")
        if args.detect_side < 64:
            p.error("--detect-side must be at least 64 pixels")
    return args


# ------------------------------------------------------------------------------ output

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


def output_mode(args) -> str:
    return "json" if args.json else "jsonl" if args.jsonl else "csv" if args.csv else "text"


def annotated_name(path: Path, used: set[str]) -> str:
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    name, n = f"{path.stem}{ext}", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}{ext}"
    used.add(name)
    return name


def annotated_copy(photo: PreparedImage, faces: list[dict], class_names: list[str]):
    labels = []
    for rec in faces:
        b = rec["box"]
        text = f"{rec['emotion']} {rec['confidence']:.0%}" + (" (no face found)" if rec["face_found"] is False else "")
        labels.append(drawing.Label((b["x"], b["y"], b["w"], b["h"]), text, class_names.index(rec["emotion"])))
    return drawing.draw_labels(photo.image.copy(), labels)


def save_annotated(image, out_dir: Path, name: str) -> None:
    fmt = "JPEG" if name.endswith(".jpg") else "PNG"
    kwargs = {"quality": 92} if fmt == "JPEG" else {}
    atomic_write_bytes(out_dir / name, lambda f: image.save(f, format=fmt, **kwargs))


# ------------------------------------------------------------------------------ main

def recognizer(args) -> EmotionRecognizer:
    notes = lambda text: print(text, file=sys.stderr)  # noqa: E731
    return EmotionRecognizer(args.model, models_dir=args.models_dir, backend=args.backend,
                             detector=None if args.no_detect else args.detector,
                             tta=False if args.video is not None else args.tta,  # None: the photo default
                             threads=args.threads, max_megapixels=args.max_megapixels, notes=notes)


def predict_video(args) -> int:
    from fervgg import video_analysis as video

    output = "json" if args.json else "jsonl" if args.jsonl else "csv" if args.csv else None
    settings = video.Settings(detector=args.detector, detect_every=args.detect_every,
                              detect_side=args.detect_side, smooth_s=args.smooth)
    options = video.VideoOptions(source=args.video, every=args.every, sample_fps=args.fps, output=output,
                                 plot=args.plot, annotate=args.annotate, settings=settings)
    video.check_outputs(options)  # before the video opens and the model loads: bad outputs fail at once
    source = video.open_video(args.video, int(args.max_megapixels * 1e6))
    rec = recognizer(args)
    print(f"model {rec.classifier.path} ({rec.classifier.backend})", file=sys.stderr)
    return video.analyse_video(options, rec.classifier, source)


def predict_photos(args) -> int:
    files = resolve_inputs(args.image_paths)
    if args.annotate:  # before the model loads: a bad folder fails at once
        check_output_folder(args.annotate, files, "`annotate`")
        writable_folder(args.annotate, "`annotate`")
        try:
            args.annotate.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FervggError(f"cannot create the --annotate folder {args.annotate}: {exc.strerror or exc}") from None
    start = time.perf_counter()
    rec = recognizer(args)
    class_names = rec.class_names
    if len(files) > 1 or args.annotate:
        print(f"{len(files)} image(s), model {rec.classifier.path} ({rec.classifier.backend})", file=sys.stderr)

    columns = records.probability_columns(class_names, records.PHOTO_FIELDS)
    writer = records.RecordWriter(output_mode(args), records.PHOTO_FIELDS + columns, records.photo_csv_row, text_line)
    failed = not_annotated = 0
    used_names: set[str] = set()
    pending: list[PreparedImage] = []

    def flush() -> None:
        nonlocal not_annotated
        rec.classify(pending, args.batch_size)
        for photo in pending:
            faces = [records.photo_record(photo.name, i, len(photo.boxes), photo.face_found, box, class_names, p)
                     for i, (box, p) in enumerate(zip(photo.boxes, photo.probs), start=1)]
            writer.write(faces)
            if args.annotate:
                try:  # a full disk costs this copy, never the predictions
                    save_annotated(annotated_copy(photo, faces, class_names), args.annotate,
                                   annotated_name(Path(photo.name), used_names))
                except OSError as exc:
                    not_annotated += 1
                    _message(progress, f"error: {printable(photo.name)}: annotated copy not written "
                                       f"({exc.strerror or exc})")
                photo.image = None
        pending.clear()

    progress = _progress(files)
    for path in progress:
        try:
            photo = rec.prepare(path, detect=not args.no_detect, whole_if_none=True, keep_image=bool(args.annotate))
        except FervggError as exc:  # this file only: the others are still predicted
            failed += 1
            _message(progress, f"error: {printable(as_flags(str(exc)))} (skipped)")
            continue
        if photo.face_found is False:
            _message(progress, f"note: {printable(path)}: no face found, classifying the whole image")
        pending.append(photo)
        if sum(len(p.crops) for p in pending) >= args.batch_size:
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
    return predict_video(args) if args.video is not None else predict_photos(args)


if __name__ == "__main__":
    run_cli(main, flags={"image_paths": "--image_path"})
