"""Emotions over time for every face in a video file or a camera stream.

    frames (streamed, never all held) -> faces (detected every few frames, or as soon as a
    tracked face's pixels change a lot; tracked in between) -> one batch of crops per
    frame -> rows, summary, plot, annotated video

Faces are found and cropped exactly as on photos (faces.detect_faces on a downscaled
copy, faces.crop_box, imaging.gray_array) and classified by the same classifiers. Each
detected face is matched to a track by box overlap; a track becomes a person (and gets
an id) only after MIN_HITS detections in a row, so a false face seen on one frame never
does. Rows are held back for those few frames, then written in frame order.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from fervgg import config, drawing, faces, imaging
from fervgg.common import FervggError, atomic_write_bytes, same_path, unique_temporary, writable_folder
from fervgg.records import RecordWriter, probability_columns

MIN_HITS = 3  # detections in a row before a track is a person
MAX_MISSED_SECONDS = 1.0  # a person unseen for longer is gone (a new face gets a new id)
MATCH_IOU = 0.3  # a detection continues a track when their boxes overlap more than this
THUMB_SIDE = 16  # face boxes are compared at this size between detections...
CHANGE_THRESHOLD = 25.0  # ...and a mean absolute difference (0-255) above this calls for detection
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
MAX_CAMERA_INDEX = 9999  # OpenCV takes an int; larger "indexes" are typos
TRUNCATED_SHARE = 0.95  # fewer frames than this share of the header's count: the file is cut short
ROW_FIELDS = ["frame", "time_s", "track", "x", "y", "w", "h", "emotion", "confidence"]


@cache
def opencv():
    """cv2, imported on first use. OpenCV and its FFmpeg print warnings of their own for
    unreadable files and absent cameras; every failure here is one clear line instead."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    return cv2


# ------------------------------------------------------------------------------ reading

@dataclass
class VideoSource:
    name: str
    capture: object
    fps: float
    frame_count: int | None  # None for cameras
    width: int
    height: int
    is_camera: bool


def open_video(spec: str, max_pixels: int | None = None) -> VideoSource:
    """A video file (any format OpenCV reads) or a camera index such as "0"; frames over
    max_pixels (default: imaging's limit) are refused."""
    cv2 = opencv()
    limit = max_pixels or imaging.max_pixels()
    if spec.isascii() and spec.isdigit():
        if int(spec) > MAX_CAMERA_INDEX:
            raise FervggError(f"camera index {spec} is out of range (0 to {MAX_CAMERA_INDEX}); a video file "
                              "needs a name that is not only digits, e.g. ./123")
        capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise FervggError(f"cannot open camera {spec} (no such camera, or another program uses it)")
        name, is_camera = f"camera {spec}", True
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise FervggError(f"no such video file: {path}")
        if not path.is_file():
            raise FervggError(f"not a regular file: {path}")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise FervggError(f"cannot read {path} as a video (not a video, or a format OpenCV cannot decode)")
        name, is_camera = str(path), False
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width * height > limit:
        capture.release()
        raise FervggError(f"{name}: frames too large ({imaging.too_large(width, height, limit)})")
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not is_camera else 0
    return VideoSource(name, capture, fps, count if count > 0 else None, width, height, is_camera)


def read_frames(source: VideoSource, every: int = 1, sample_fps: float | None = None,
                decode_all: bool = False):
    """(index, time_s, frame or None, analyse?) for every frame, streamed.

    Frames that are not analysed are only decoded when `decode_all` (annotating). Time is
    the container's timestamp for files (right for variable frame rates; frame index / fps
    where a container has none), wall time since the start for cameras.
    """
    start = time.perf_counter()
    next_sample = 0
    index = -1
    last = -1.0
    while source.capture.grab():
        index += 1
        t = time.perf_counter() - start if source.is_camera else file_time(source, index, last)
        last = t
        if sample_fps:
            analyse = t + 1e-9 >= next_sample / sample_fps
            if analyse:
                next_sample = math.floor(t * sample_fps + 1e-9) + 1
        else:
            analyse = index % every == 0
        frame = None
        if analyse or decode_all:
            ok, frame = source.capture.retrieve()
            if not ok:
                break
        yield index, t, frame, analyse


def file_time(source: VideoSource, index: int, last: float) -> float:
    """Seconds into the file of the frame just grabbed: its presentation timestamp, unless
    the backend gives none that makes sense (then index / fps)."""
    msec = source.capture.get(opencv().CAP_PROP_POS_MSEC)
    if math.isfinite(msec) and msec >= 0 and msec / 1000 > last and (msec > 0 or index == 0):
        return msec / 1000
    return index / source.fps


# ------------------------------------------------------------------------------ tracking

@dataclass
class Track:
    box: tuple[int, int, int, int]
    hits: int = 1
    misses: int = 0
    id: int | None = None  # given on confirmation
    probs: np.ndarray | None = None  # smoothed probabilities, last analysed frame
    time_s: float = 0.0
    thumb: np.ndarray | None = None  # the box's pixels at the last detection, small


def face_thumb(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    patch = gray[max(y, 0):y + h, max(x, 0):x + w]
    if patch.size == 0:
        return np.zeros((THUMB_SIDE, THUMB_SIDE), np.int16)
    return opencv().resize(patch, (THUMB_SIDE, THUMB_SIDE), interpolation=opencv().INTER_AREA).astype(np.int16)


class Tracker:
    """Greedy IoU matching of detections to tracks (SORT without the motion model)."""

    def __init__(self, max_misses: int, min_hits: int = MIN_HITS, match_iou: float = MATCH_IOU):
        self.max_misses, self.min_hits, self.match_iou = max_misses, min_hits, match_iou
        self.tracks: list[Track] = []
        self.confirmed_count = 0

    def update(self, boxes: list[tuple[int, int, int, int]]) -> None:
        pairs = sorted(((faces.iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        used_tracks, used_boxes = set(), set()
        for overlap, ti, bi in pairs:
            if overlap <= self.match_iou or ti in used_tracks or bi in used_boxes:
                continue
            used_tracks.add(ti)
            used_boxes.add(bi)
            track = self.tracks[ti]
            track.box, track.hits, track.misses = boxes[bi], track.hits + 1, 0
            if track.id is None and track.hits >= self.min_hits:
                self.confirmed_count += 1
                track.id = self.confirmed_count
        kept = []
        for ti, track in enumerate(self.tracks):
            if ti not in used_tracks:
                track.misses += 1
                # A tentative track must be seen every time; a person may be missed a while.
                if track.id is None or track.misses > self.max_misses:
                    continue
            kept.append(track)
        kept += [Track(boxes[bi]) for bi in range(len(boxes)) if bi not in used_boxes]
        self.tracks = kept

    def confirm_tentative(self) -> int:
        """Give ids to the tentative tracks seen at every detection so far (for clips too short
        to confirm anyone); returns how many."""
        count = 0
        for track in self.tracks:
            if track.id is None and track.misses == 0:
                self.confirmed_count += 1
                track.id = self.confirmed_count
                count += 1
        return count

    def visible(self) -> list[Track]:
        """Tracks found by the latest detection (tentative ones included)."""
        return [t for t in self.tracks if t.misses == 0]


# ------------------------------------------------------------------------------ analysis

@dataclass
class FaceRow:
    frame: int
    time_s: float
    track: Track
    box: tuple[int, int, int, int]
    probs: np.ndarray


@dataclass
class Settings:
    detector: str = config.DETECTOR
    detect_every: int = config.VIDEO_DETECT_EVERY
    detect_side: int = config.VIDEO_DETECT_SIDE
    smooth_s: float = 0.0
    analysed_fps: float = 30.0  # analysed frames per second of video (for the miss allowance)


class Analyser:
    """Frame in, rows out: detection, tracking, cropping, one classifier call per frame."""

    def __init__(self, classifier, settings: Settings):
        self.classifier, self.settings = classifier, settings
        self.tracker = Tracker(max_misses=max(1, round(MAX_MISSED_SECONDS * settings.analysed_fps
                                                       / settings.detect_every)))
        self.since_detection = None
        self.detections = 0

    def analyse(self, index: int, t: float, frame: np.ndarray) -> list[FaceRow]:
        cv2 = opencv()
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        due = self.since_detection is None or self.since_detection + 1 >= self.settings.detect_every
        if due or self._faces_changed(gray):
            boxes = faces.detect_faces(Image.fromarray(gray), self.settings.detector,
                                       max_side=self.settings.detect_side)
            self.tracker.update(boxes)
            self.detections += 1
            self.since_detection = 0
            for track in self.tracker.visible():
                track.thumb = face_thumb(gray, track.box)
        else:
            self.since_detection += 1
        tracks = self.tracker.visible()
        if not tracks:
            return []
        from fervgg.recognizer import crop_faces

        crops = crop_faces(Image.fromarray(gray), [t.box for t in tracks], self.classifier.image_size)
        probs = self.classifier.predict(np.stack(crops)[..., None])
        return [FaceRow(index, t, track, track.box, self._smoothed(track, p, t))
                for track, p in zip(tracks, probs)]

    def _faces_changed(self, gray: np.ndarray) -> bool:
        """Has a tracked face's box changed a lot since it was detected (a cut, the person
        left or moved fast)? Then detect now rather than report a stale box."""
        return any(float(np.abs(face_thumb(gray, t.box) - t.thumb).mean()) > CHANGE_THRESHOLD
                   for t in self.tracker.visible() if t.thumb is not None)

    def _smoothed(self, track: Track, probs: np.ndarray, t: float) -> np.ndarray:
        """Exponential smoothing along the track with time constant `smooth_s` seconds."""
        tau = self.settings.smooth_s
        if tau > 0 and track.probs is not None:
            alpha = 1.0 - math.exp(-max(t - track.time_s, 0.0) / tau)
            probs = (1.0 - alpha) * track.probs + alpha * probs
        track.probs, track.time_s = probs, t
        return probs


class Confirmer:
    """Holds rows back until each one's track is confirmed or dropped; keeps frame order."""

    def __init__(self, delay_frames: int):
        self.delay = delay_frames
        self.pending: deque[list[FaceRow]] = deque()

    def push(self, rows: list[FaceRow]) -> list[FaceRow]:
        self.pending.append(rows)
        return self._release(len(self.pending) > self.delay)

    def flush(self) -> list[FaceRow]:
        out = []
        while self.pending:
            out += self._release(True)
        return out

    def _release(self, ready: bool) -> list[FaceRow]:
        if not ready:
            return []
        return [row for row in self.pending.popleft() if row.track.id is not None]


# ------------------------------------------------------------------------------ outputs

def row_record(row: FaceRow, class_names: list[str]) -> dict:
    best = int(np.argmax(row.probs))
    x, y, w, h = row.box
    record = {"frame": row.frame, "time_s": round(row.time_s, 4), "track": row.track.id,
              "x": x, "y": y, "w": w, "h": h, "emotion": class_names[best],
              "confidence": round(float(row.probs[best]), 6)}
    columns = probability_columns(class_names, ROW_FIELDS)
    record.update({name: round(float(v), 6) for name, v in zip(columns, row.probs)})
    return record


@dataclass
class TrackSummary:
    first_s: float
    last_s: float
    rows: int = 0
    top_counts: np.ndarray = None
    prob_sum: np.ndarray = None


class Summary:
    """Per person: first/last time seen, share of analysed frames per emotion, dominant one."""

    def __init__(self, class_names: list[str]):
        self.class_names = class_names
        self.tracks: dict[int, TrackSummary] = {}

    def add(self, rows: list[FaceRow]) -> None:
        n = len(self.class_names)
        for row in rows:
            s = self.tracks.setdefault(row.track.id, TrackSummary(row.time_s, row.time_s, 0,
                                                                  np.zeros(n), np.zeros(n)))
            s.last_s, s.rows = row.time_s, s.rows + 1
            s.top_counts[int(np.argmax(row.probs))] += 1
            s.prob_sum += row.probs

    def as_dicts(self) -> list[dict]:
        out = []
        for track, s in sorted(self.tracks.items()):
            share = s.top_counts / max(s.rows, 1)
            out.append({"track": track, "first_s": round(s.first_s, 3), "last_s": round(s.last_s, 3),
                        "frames": s.rows, "dominant": self.class_names[int(np.argmax(s.top_counts))],
                        "share": {n: round(float(v), 4) for n, v in zip(self.class_names, share)},
                        "mean_probability": {n: round(float(v), 4)
                                             for n, v in zip(self.class_names, s.prob_sum / max(s.rows, 1))}})
        return out

    def text(self) -> str:
        lines = []
        for d in self.as_dicts():
            shares = ", ".join(f"{n} {v:.0%}" for n, v in sorted(d["share"].items(), key=lambda kv: -kv[1])
                               if v >= 0.005)
            lines.append(f"track {d['track']}: {d['first_s']:.2f}-{d['last_s']:.2f} s, {d['frames']} frame(s), "
                         f"mostly {d['dominant']} ({shares})")
        return "\n".join(lines)


class Timeline:
    """Probabilities over time per track, for the plot (a few floats per row)."""

    def __init__(self):
        self.points: dict[int, list[tuple[float, np.ndarray]]] = {}

    def add(self, rows: list[FaceRow]) -> None:
        for row in rows:
            self.points.setdefault(row.track.id, []).append((row.time_s, row.probs.astype(np.float32)))

    def plot(self, path: Path, class_names: list[str], title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tracks = sorted(self.points)
        panels = max(1, len(tracks))
        fig, axes = plt.subplots(panels, 1, figsize=(10, 2.4 * panels + 0.8), sharex=True, squeeze=False)
        colours = [drawing.colour_of(i) for i in range(len(class_names))]
        for ax, track in zip(axes[:, 0], tracks or [None]):
            if track is None:
                ax.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax.transAxes)
                continue
            times = np.array([t for t, _ in self.points[track]])
            probs = np.stack([p for _, p in self.points[track]])
            for i, name in enumerate(class_names):
                ax.plot(times, probs[:, i], color=colours[i], lw=1.6, label=name)
            ax.set_ylim(0, 1)
            ax.set_ylabel("probability")
            ax.set_title(f"track {track}", loc="left", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0, 0].legend(ncol=min(len(class_names), 7), fontsize=8, loc="lower left",
                          bbox_to_anchor=(0, 1.12), frameon=False)
        axes[-1, 0].set_xlabel("time (s)")
        fig.suptitle(title, fontsize=10, y=0.995)
        fig.tight_layout()
        try:
            atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=100))
        finally:
            plt.close(fig)


class Annotator:
    """The video with boxes, track ids and labels; written to a temporary file and renamed
    at the end, so an interrupted run still leaves a complete, playable (shorter) video."""

    def __init__(self, path: Path, source: VideoSource):
        suffix = path.suffix.lower()  # one of FOURCC's (check_outputs)
        self.path = path
        self.partial = unique_temporary(path)  # two runs writing one file never share it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FervggError(f"cannot create the folder of `annotate` {path}: {exc.strerror or exc}") from None
        cv2 = opencv()
        self.writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*FOURCC[suffix]),
                                      source.fps, (source.width, source.height))
        if not self.writer.isOpened():
            raise FervggError(f"cannot write the video {path} (folder not writable, or no encoder for {suffix})")
        self.frames = 0

    def write(self, frame: np.ndarray, rows: list[FaceRow], class_names: list[str]) -> None:
        labels = []
        for row in rows:
            best = int(np.argmax(row.probs))
            labels.append(drawing.Label(row.box, f"#{row.track.id} {class_names[best]} {row.probs[best]:.0%}", best))
        self.writer.write(drawing.draw_labels_bgr(frame, labels))
        self.frames += 1

    def close(self) -> None:
        self.writer.release()
        if self.frames:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)

    def discard(self) -> None:
        self.writer.release()
        self.partial.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the run

@dataclass
class VideoOptions:
    source: str
    every: int = 1
    sample_fps: float | None = None
    output: str | None = None  # "csv", "jsonl", "json" (summary) or None (text summary)
    plot: Path | None = None
    annotate: Path | None = None
    settings: Settings = field(default_factory=Settings)


@dataclass
class FrameStep:
    """One frame read: the rows released now (confirmed people, frame order; rows lag the
    frame by a few frames until their person is confirmed) and, for drawing on this
    frame, the latest rows of confirmed people."""
    index: int
    frame: np.ndarray | None  # None when the frame was not decoded
    rows: list[FaceRow]
    shown: list[FaceRow]
    analysed: bool


class FrameAnalysis:
    """A video's frames through detection, tracking and classification: `steps()` yields
    a FrameStep per frame read; `flush()` then releases the rows still held back (also
    after an interruption)."""

    def __init__(self, source: VideoSource, classifier, settings: Settings, every: int = 1,
                 sample_fps: float | None = None, decode_all: bool = False):
        self.source, self.every, self.sample_fps, self.decode_all = source, every, sample_fps, decode_all
        self.step = every if not sample_fps else max(source.fps / sample_fps, 1.0)
        settings.analysed_fps = source.fps / self.step
        self.analyser = Analyser(classifier, settings)
        self.confirmer = Confirmer(delay_frames=MIN_HITS * settings.detect_every)

    def steps(self):
        latest: list[FaceRow] = []
        for index, t, frame, analyse in read_frames(self.source, self.every, self.sample_fps, self.decode_all):
            released = []
            if analyse:
                latest = self.analyser.analyse(index, t, frame)
                released = self.confirmer.push(latest)
            yield FrameStep(index, frame, released, [r for r in latest if r.track.id is not None], analyse)

    def flush(self) -> list[FaceRow]:
        if 0 < self.analyser.detections < MIN_HITS:  # too short for any track to be confirmed
            if self.analyser.tracker.confirm_tentative():
                print(f"note: {self.source.name}: only {self.analyser.detections} frame(s) analysed (a still "
                      "image?): the faces found are reported without tracking confirmation", file=sys.stderr)
        return self.confirmer.flush()


def check_outputs(options: VideoOptions) -> None:
    """Every output file, before any work: never the input video itself (resolved paths and
    inodes), never a folder, and its folder writable. FervggError naming the setting."""
    camera = options.source.isascii() and options.source.isdigit()
    for setting, path in (("annotate", options.annotate), ("plot", options.plot)):
        if path is None:
            continue
        if not camera and same_path(path, Path(options.source).expanduser()):
            raise FervggError(f"`{setting}` {path} is the input video: it would be overwritten; choose another file")
        if path.is_dir():
            raise FervggError(f"`{setting}` {path} is a folder; give a file name such as "
                              f"{'out.mp4' if setting == 'annotate' else 'emotions.png'}")
        writable_folder(path.parent, f"the folder of `{setting}`")
    if options.annotate is not None and options.annotate.suffix.lower() not in FOURCC:
        raise FervggError(f"`annotate` {options.annotate}: use one of {', '.join(FOURCC)} for a video")
    if options.annotate is not None and options.plot is not None and same_path(options.annotate, options.plot):
        raise FervggError(f"`annotate` and `plot` name the same file {options.plot}")


def analyse_video(options: VideoOptions, classifier, source: VideoSource | None = None) -> int:
    """The command line's video run: rows to stdout (CSV, JSON lines), summary, plot and
    annotated video; returns the exit code (130 after Ctrl+C, outputs complete)."""
    check_outputs(options)
    class_names = classifier.class_names
    source = source or open_video(options.source)
    writer = RecordWriter(options.output, ROW_FIELDS + probability_columns(class_names, ROW_FIELDS)) \
        if options.output in ("csv", "jsonl") else None
    summary, timeline = Summary(class_names), Timeline() if options.plot else None
    annotator = Annotator(options.annotate, source) if options.annotate else None
    analysis = FrameAnalysis(source, classifier, options.settings, options.every, options.sample_fps,
                             decode_all=annotator is not None)
    progress = _progress(source, analysis.step)
    frames_read = analysed = rows = 0
    interrupted = False
    started = time.perf_counter()

    def emit(released: list[FaceRow]) -> None:
        nonlocal rows
        rows += len(released)
        if writer is not None:
            writer.write(row_record(r, class_names) for r in released)
        summary.add(released)
        if timeline is not None:
            timeline.add(released)

    try:
        for frame_step in analysis.steps():
            emit(frame_step.rows)
            frames_read += 1
            if frame_step.analysed:
                analysed += 1
                if progress is not None:
                    progress.update(1)
            if annotator is not None:
                annotator.write(frame_step.frame, frame_step.shown, class_names)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
        source.capture.release()
    emit(analysis.flush())
    elapsed = time.perf_counter() - started
    if frames_read == 0:
        if annotator is not None:
            annotator.discard()
        raise FervggError(f"{source.name}: no frame could be read (empty or damaged video)")
    if annotator is not None:
        annotator.close()
    if timeline is not None:
        timeline.plot(options.plot, class_names, f"{Path(source.name).name}: emotion probabilities over time")
    report(options, source, summary, rows, analysed, frames_read, elapsed, interrupted)
    return 130 if interrupted and not source.is_camera else 0  # Ctrl+C is how a camera run ends


def report(options, source, summary, rows, analysed, frames_read, elapsed, interrupted) -> None:
    rate = analysed / elapsed if elapsed > 0 else 0.0
    info = (f"{source.name}: {analysed} of {frames_read} frame(s) analysed in {elapsed:.1f} s "
            f"({rate:.1f} frames/s), {rows} face row(s), {len(summary.tracks)} person(s)")
    if options.output == "json":
        print(json.dumps({"video": source.name, "fps": source.fps, "frames_read": frames_read,
                          "frames_analysed": analysed, "seconds": round(elapsed, 2),
                          "interrupted": interrupted, "tracks": summary.as_dicts()}, indent=1))
    elif options.output is None and summary.tracks:
        print(summary.text())
    if options.output in ("csv", "jsonl") and summary.tracks:
        print(summary.text(), file=sys.stderr)
    if not summary.tracks:
        print(f"no face found in {source.name}", file=sys.stderr)
    if interrupted:
        print(f"interrupted at frame {frames_read}: the outputs hold everything up to there", file=sys.stderr)
    elif source.frame_count and frames_read < TRUNCATED_SHARE * source.frame_count:
        print(f"warning: {source.name}: read {frames_read} of the {source.frame_count} frames its header "
              "claims: the file is probably truncated or damaged; the results cover what could be read",
              file=sys.stderr)
    print(info, file=sys.stderr)
    for what, path in (("plot", options.plot), ("annotated video", options.annotate)):
        if path:
            print(f"{what}: {path}", file=sys.stderr)


def _progress(source: VideoSource, step: float):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = math.ceil(source.frame_count / step) if source.frame_count else None
    return tqdm(total=total, desc="frames", unit="frame", file=sys.stderr, leave=False)

