"""Video analysis speed and memory, measured side by side in one run.

  1. frames analysed per second on a clip (default ../shared/videos/single_face.mp4,
     640x360, one face), every frame analysed, LiteRT (--backend, default auto: the int8
     export when there is one, as prediction chooses), for several detection
     settings (detect every Nth frame / downscaled side), each checked to give every
     frame a face row;
  2. the photo path (predict_emotion.py --image_path, a child process timing itself, start-up
     excluded) on the same frames saved as JPEG files: images per second, and the ratio;
  3. peak memory (max RSS of a child process running predict_emotion.py --video) on the
     clip looped 1x and 10x: streaming means it must not grow.

    python bench/video.py --model models/pretrained/<model>.keras     # about 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import cv2

from fervgg import config
from fervgg import video_analysis as video
from fervgg.classifiers import find_model, open_classifier
from fervgg.common import cpu_description

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCRIPT = ROOT / "scripts" / "predict_emotion.py"
SETTINGS = ((1, 640), (1, 480), (1, 320), (3, 480), (3, 320), (5, 480))  # (detect every, side)


def read_all(path: Path) -> tuple[list, float]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames, capture.get(cv2.CAP_PROP_FPS)


def write_looped(frames: list, fps: float, times: int, path: Path) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for _ in range(times):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return path


def video_rate(clip: Path, classifier, class_names, every: int, side: int, repeats: int) -> tuple[float, int, int]:
    """Best-of-`repeats` analysed frames/s of the whole video path; (rate, frames, rows)."""
    best = 0.0
    for _ in range(repeats):
        options = video.VideoOptions(source=str(clip), output="jsonl",
                                     settings=video.Settings(detect_every=every, detect_side=side))
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            video.analyse_video(options, classifier)
        elapsed = time.perf_counter() - start
        frames = int(err.getvalue().split(" of ")[1].split()[0])
        rows = out.getvalue().count("\n")
        best = max(best, frames / elapsed)
    return best, frames, rows


def photo_rate(folder: Path, model: Path, repeats: int, backend: str) -> tuple[float, int]:
    """Images/s of predict_emotion.py --image_path FOLDER (its own timing, start-up excluded)."""
    best, faces = 0.0, 0
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, str(SCRIPT), "--image_path", str(folder), "--model", str(model),
                               "--backend", backend, "--jsonl"], capture_output=True, text=True, check=True)
        done = re.search(r"(\d+) of \d+ image\(s\) predicted in ([\d.]+) s", proc.stderr)
        best = max(best, int(done.group(1)) / float(done.group(2)))
        faces = proc.stdout.count('"face_found": true')
    return best, faces


def peak_rss_mb(clip: Path, model: Path, backend: str) -> tuple[float, float]:
    """(max RSS in MB, seconds) of one predict_emotion.py --video run in a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--video", str(clip), "--model", str(model),
                             "--backend", backend, "--csv"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict_emotion.py --video {clip} failed:\n{err}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a .keras model with its .tflite export beside it")
    p.add_argument("--backend", choices=("auto", "int8", "litert"), default="auto",
                   help="LiteRT file: auto (the int8 one when current, as prediction does), int8, or the float one")
    p.add_argument("--clip", type=Path, default=ROOT.parent / "shared" / "videos" / "single_face.mp4")
    p.add_argument("--repeats", type=int, default=2, help="runs per measurement (best is kept)")
    args = p.parse_args()
    choice = find_model(args.model, backend=args.backend)
    if choice.backend != "litert":
        raise SystemExit(f"no LiteRT export of {args.model}: python scripts/export_model.py --model {args.model}")
    tflite = choice.file
    if not args.clip.is_file():
        raise SystemExit(f"clip not found: {args.clip}")
    frames, fps = read_all(args.clip)
    height, width = frames[0].shape[:2]
    print(f"machine: {cpu_description()}; load average {os.getloadavg()[0]:.1f}")
    print(f"clip: {args.clip.name}, {len(frames)} frames, {width}x{height}, {fps:.1f} fps; "
          f"model {tflite.name} (LiteRT)")

    classifier = open_classifier(tflite)
    class_names = classifier.class_names
    print("\n1. video path, every frame analysed (best of %d runs)" % args.repeats)
    print(f"   {'detect every':>12}  {'side':>5}  {'frames/s':>8}  {'frames with a face':>18}")
    rates = {}
    for every, side in SETTINGS:
        rate, n, rows = video_rate(args.clip, classifier, class_names, every, side, args.repeats)
        rates[(every, side)] = rate
        print(f"   {every:>12}  {side:>5}  {rate:>8.1f}  {rows:>9} of {n}")
    default = (config.VIDEO_DETECT_EVERY, config.VIDEO_DETECT_SIDE)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        folder.mkdir()
        for i, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"frame{i:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rate, found = photo_rate(folder, args.model, args.repeats, args.backend)
        print(f"\n2. photo path on the same frames as JPEG files: {rate:.1f} images/s, a face in {found} of "
              f"{len(frames)}")
        print(f"   video (default: detect every {default[0]}, side {default[1]}) / photo: "
              f"{rates[default] / rate:.2f}x;  detecting on every full-size frame (1, 640) / photo: "
              f"{rates[(1, 640)] / rate:.2f}x")

        print("\n3. peak memory of predict_emotion.py --video (child process, default settings)")
        for times in (1, 10):
            clip = write_looped(frames, fps, times, Path(tmp) / f"looped{times}.mp4")
            rss, seconds = peak_rss_mb(clip, args.model, args.backend)
            print(f"   clip x{times:<2} ({len(frames) * times:>4} frames): max RSS {rss:7.1f} MB  ({seconds:.1f} s)")
            if times == 1:
                base = rss
        print(f"   growth 1x -> 10x: {rss - base:+.1f} MB (limit +50 MB)")


if __name__ == "__main__":
    main()
