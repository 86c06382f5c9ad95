"""predict_emotion.py --video: tracking, rows, sampling, outputs, Ctrl+C and bad input.

The logic is tested on tiny synthetic clips written with cv2.VideoWriter, with the face
detector replaced by one that reports the drawn square (so CI needs no real faces); the
real detector runs on ../shared/videos when it is there.
"""

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import script

from fervgg import demo_data, faces
from fervgg import video_analysis as video

predict_emotion = script("predict_emotion")

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = ROOT.parent / "shared" / "videos"
SCRIPT = str(ROOT / "scripts" / "predict_emotion.py")
SHIPPED = ROOT / "models" / "pretrained"
needs_videos = pytest.mark.skipif(not (VIDEOS / "single_face.mp4").is_file(),
                                  reason="../shared/videos is not available")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FPS = 10.0
W, H = 160, 120
SIDE = 40


def square_at(index: int) -> tuple[int, int, int, int]:
    """Where the synthetic "face" (a textured square) is on frame `index`: drifting right."""
    return 20 + 2 * index, 30, SIDE, SIDE


def write_clip(path: Path, frames: int = 30, face_until: int | None = None) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    for i in range(frames):
        frame = np.full((H, W, 3), 90, np.uint8)
        if face_until is None or i < face_until:
            x, y, w, h = square_at(i)
            frame[y:y + h, x:x + w] = texture
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def fake_detector(monkeypatch):
    """Reports the square where the frame has it (textured, so not flat grey), plus a false
    face on detection call number 2 only; records the frames it was called on."""
    calls = []

    def detect(image, detector="opencv", max_side=0):
        gray = np.asarray(image)
        calls.append(gray.shape)
        boxes = []
        cols = np.where(gray.std(axis=0) > 20)[0]
        if len(cols):
            boxes.append((int(cols[0]), 30, SIDE, SIDE))
        if len(calls) == 2:
            boxes.append((120, 80, 30, 30))
        return boxes

    monkeypatch.setattr(faces, "detect_faces", detect)
    return calls


def run_video(capsys, *args):
    code = predict_emotion.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_rows_track_and_times_on_a_synthetic_clip(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=30)
    code, out, err = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv",
                               "--detect-every", "1")
    assert code == 0, err
    rows = csv_rows(out)
    assert len(rows) == 30, "one row per face per analysed frame; the one-frame false face is no person"
    assert {r["track"] for r in rows} == {"1"}
    assert [int(r["frame"]) for r in rows] == list(range(30))
    for r in rows:
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / FPS, abs=1e-4)
        probs = [float(r[n]) for n in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert r["emotion"] in r and float(r["confidence"]) == pytest.approx(max(probs), abs=1e-6)
        assert (int(r["x"]), int(r["w"])) == (square_at(int(r["frame"]))[0], SIDE)
    assert "track 1: 0.00-2.90 s, 30 frame(s)" in err  # the summary goes to stderr with --csv
    assert "30 of 30 frame(s) analysed" in err


def test_detection_every_few_frames_tracks_in_between(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=30)
    code, out, _ = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--jsonl",
                             "--detect-every", "3")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(fake_detector) == 10, "detector runs on every 3rd frame only"
    assert [r["frame"] for r in rows] == list(range(30)) and {r["track"] for r in rows} == {1}
    # Between detections the box stays where the face was last found.
    assert rows[4]["x"] == square_at(3)[0]


def test_sampling_every_and_fps(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=30)
    _, out, _ = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv",
                          "--every", "2", "--detect-every", "1")
    assert [int(r["frame"]) for r in csv_rows(out)] == list(range(0, 30, 2))
    _, out, _ = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv",
                          "--fps", "2.5", "--detect-every", "1")
    assert [int(r["frame"]) for r in csv_rows(out)] == [0, 4, 8, 12, 16, 20, 24, 28]


def test_face_then_none_gives_rows_only_while_the_face_is_there(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=30, face_until=14)
    code, out, _ = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv",
                             "--detect-every", "3")
    assert code == 0
    frames = [int(r["frame"]) for r in csv_rows(out)]
    # Frame 14 is no detection frame (0, 3, ..., 12, 15), but the face's box changed: detect now.
    assert frames == list(range(14)), "no stale rows after the face has gone"


def test_smoothing_follows_the_time_constant(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=20)
    base = ["--video", str(clip), "--model", str(tiny_model.path), "--csv", "--detect-every", "1"]
    raw = csv_rows(run_video(capsys, *base)[1])
    smooth = csv_rows(run_video(capsys, *base, "--smooth", "0.5")[1])
    alpha = 1 - np.exp(-(1 / FPS) / 0.5)
    expected = float(raw[0]["happy"])
    for r_raw, r_smooth in zip(raw, smooth):
        if r_raw is not raw[0]:
            expected = (1 - alpha) * expected + alpha * float(r_raw["happy"])
        assert float(r_smooth["happy"]) == pytest.approx(expected, abs=2e-5)


def test_summary_json_plot_and_annotated_video(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", frames=24)
    plot, annotated = tmp_path / "out" / "plot.png", tmp_path / "out" / "annotated.mp4"
    code, out, err = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--json",
                               "--every", "2", "--plot", str(plot), "--annotate", str(annotated))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames_read"] == 24 and summary["frames_analysed"] == 12
    (track,) = summary["tracks"]
    assert track["track"] == 1 and track["frames"] == 12
    assert sum(track["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert track["dominant"] == max(track["share"], key=track["share"].get)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capture = cv2.VideoCapture(str(annotated))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (H, W, 3)
        count += 1
    assert count == 24, "every frame is written, analysed or not"
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS, abs=0.01)
    assert sorted(p.name for p in annotated.parent.iterdir()) == ["annotated.mp4", "plot.png"]


def test_ctrl_c_leaves_complete_outputs(tiny_model, fake_detector, tmp_path, capsys, monkeypatch):
    clip = write_clip(tmp_path / "clip.avi", frames=30)
    annotated = tmp_path / "annotated.mp4"
    real = video.Analyser.analyse

    def interrupt_at_frame_12(self, index, t, frame):
        if index == 12:
            raise KeyboardInterrupt
        return real(self, index, t, frame)

    monkeypatch.setattr(video.Analyser, "analyse", interrupt_at_frame_12)
    code, out, err = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv",
                               "--annotate", str(annotated), "--detect-every", "1")
    assert code == 130
    assert [int(r["frame"]) for r in csv_rows(out)] == list(range(12)), "rows held back are written too"
    assert "interrupted at frame" in err
    capture = cv2.VideoCapture(str(annotated))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert not list(tmp_path.glob(".*partial*"))


def test_tracker_ids_and_one_frame_false_faces():
    tracker = video.Tracker(max_misses=2)
    a, b = (10, 10, 40, 40), (100, 10, 40, 40)
    tracker.update([a, (200, 200, 20, 20)])  # the second box is never seen again
    for step in range(1, 4):
        tracker.update([(10 + step, 10, 40, 40), (100 + step, 10, 40, 40)] if step > 1 else
                       [(11, 10, 40, 40), b])
    ids = sorted(t.id for t in tracker.tracks if t.id is not None)
    assert ids == [1, 2] and len(tracker.tracks) == 2
    tracker.update([])  # both missed once: kept as persons, not visible
    assert len(tracker.tracks) == 2 and tracker.visible() == []
    tracker.update([])
    tracker.update([])  # missed more than max_misses: gone
    assert tracker.tracks == []


@pytest.mark.parametrize("kind", ["missing", "text", "empty_video", "camera", "folder"])
def test_bad_video_inputs_are_one_line_errors(tiny_model, tmp_path, kind):
    if kind == "missing":
        source, expected = str(tmp_path / "nope.mp4"), "no such video file"
    elif kind == "text":
        (tmp_path / "notes.mp4").write_text("not a video\n" * 100)
        source, expected = str(tmp_path / "notes.mp4"), "cannot read"
    elif kind == "empty_video":
        writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
        writer.release()
        source, expected = str(tmp_path / "empty.avi"), "cannot read|no frame could be read"
    elif kind == "camera":
        source, expected = "97", "cannot open camera 97"
    else:
        source, expected = str(tmp_path), "not a regular file"
    proc = subprocess.run([sys.executable, SCRIPT, "--video", source, "--model", str(tiny_model.path),
                           "--backend", "litert"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and len(proc.stderr.splitlines()) <= 2 and re.search(expected, lines[0]), proc.stderr


def test_video_flags_are_checked():
    for argv, message in ((["--image_path", "x.jpg", "--plot", "p.png"], "only with --video"),
                          (["--video", "x.mp4", "--every", "0"], "at least 1"),
                          (["--video", "x.mp4", "--every", "2", "--fps", "3"], "not allowed with"),
                          (["--video", "x.mp4", "--no-detect"], "not --video"),
                          (["--video", "x.mp4", "--tta"], "not --video"),
                          (["--video", "x.mp4", "--no-tta"], "not --video")):
        proc = subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)


# ------------------------------------------------------------------------------ real clips

def shipped_model() -> Path | None:
    found = sorted(SHIPPED.glob("*.keras")) if SHIPPED.is_dir() else []
    return found[0] if found else None


@needs_videos
def test_single_face_clip_is_one_person(tiny_model, capsys):
    model = shipped_model() or tiny_model.path
    code, out, err = run_video(capsys, "--video", str(VIDEOS / "single_face.mp4"), "--model", str(model),
                               "--csv")
    assert code == 0, err
    rows = csv_rows(out)
    assert {r["track"] for r in rows} == {"1"}, "one person, no false second face"
    frames = sorted(int(r["frame"]) for r in rows)
    assert frames[0] <= 2 and frames[-1] >= 69 and len(frames) >= 66, "the track covers the clip"
    if shipped_model():
        last_second = [r for r in rows if float(r["time_s"]) >= 72 / 30.0 - 1.0]
        emotions = [r["emotion"] for r in last_second]
        assert max(set(emotions), key=emotions.count) == "happy"


@needs_videos
def test_no_face_clip(tiny_model, capsys):
    code, out, err = run_video(capsys, "--video", str(VIDEOS / "no_face.mp4"), "--model",
                               str(tiny_model.path), "--csv")
    assert code == 0
    assert csv_rows(out) == [] and out.startswith("frame,time_s,track")
    assert "no face found" in err


@needs_videos
def test_face_then_animation_clip(tiny_model, capsys):
    code, out, err = run_video(capsys, "--video", str(VIDEOS / "face_noface.mov"), "--model",
                               str(tiny_model.path), "--csv")
    assert code == 0, err
    times = [float(r["time_s"]) for r in csv_rows(out)]
    assert times, "the face in the first part is found"
    capture = cv2.VideoCapture(str(VIDEOS / "face_noface.mov"))
    fps = capture.get(cv2.CAP_PROP_FPS)
    # Find the cut: the first frame that differs strongly from the one before.
    previous, cut = None, None
    for i in range(int(capture.get(cv2.CAP_PROP_FRAME_COUNT))):
        ok, frame = capture.read()
        if not ok:
            break
        small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (32, 18)).astype(float)
        if previous is not None and np.abs(small - previous).mean() > 25 and cut is None:
            cut = i
        previous = small
    assert cut is not None and max(times) < cut / fps, f"rows after the cut at {cut / fps:.2f} s"


def test_real_detector_tracks_a_drawn_face_in_a_generated_clip(tiny_model, tmp_path, capsys):
    """The whole path with OpenCV's detector: a demo-data face drifting across 24 frames."""
    face = np.asarray(demo_data.draw_face("happy", np.random.default_rng(0), 110).convert("RGB"))[..., ::-1]
    writer = cv2.VideoWriter(str(tmp_path / "drawn.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 240))
    for i in range(24):
        frame = np.full((240, 320, 3), 125, np.uint8)
        frame[60:170, 40 + 3 * i:150 + 3 * i] = face
        writer.write(frame)
    writer.release()
    # OpenCV's Haar cascades: RetinaFace (the default) does not take the cartoon face for a face.
    code, out, err = run_video(capsys, "--video", str(tmp_path / "drawn.avi"), "--model", str(tiny_model.path),
                               "--csv", "--detector", "opencv")
    assert code == 0, err
    rows = csv_rows(out)
    assert {r["track"] for r in rows} == {"1"} and len(rows) >= 22
    last = rows[-1]
    assert faces.iou((int(last["x"]), int(last["y"]), int(last["w"]), int(last["h"])),
                     (40 + 3 * int(last["frame"]), 60, 110, 110)) > 0.3


# ------------------------------------------------------------------------------ issue 21

def test_annotate_onto_the_input_video_is_refused_before_any_work(tmp_path):
    clip = write_clip(tmp_path / "clip.avi", frames=3)
    before = clip.read_bytes()
    link = tmp_path / "link.avi"
    link.symlink_to(clip)
    for target in (clip, tmp_path / "sub" / ".." / "clip.avi", link):
        (tmp_path / "sub").mkdir(exist_ok=True)
        for flag in ("--annotate", "--plot"):
            with pytest.raises(video.FervggError, match=f"`{flag[2:]}` .* is the input video"):
                predict_emotion.main(["--video", str(clip), flag, str(target),
                                      "--model", str(tmp_path / "no-model-needed-yet.keras")])
    assert clip.read_bytes() == before


def test_two_annotators_of_one_file_use_different_temporary_names(tmp_path):
    clip = write_clip(tmp_path / "clip.avi", frames=2)
    source = video.open_video(str(clip))
    first, second = (video.Annotator(tmp_path / "out.avi", source) for _ in range(2))
    assert first.partial != second.partial and first.partial.suffix == ".avi"
    first.discard()
    second.discard()


@pytest.mark.parametrize("case", ["folder", "under_file", "read_only"])
def test_plot_is_checked_before_the_model_loads(tmp_path, monkeypatch, case):
    import errno
    import tempfile

    clip = write_clip(tmp_path / "clip.avi", frames=2)
    (tmp_path / "afile").write_text("x")
    plot = {"folder": tmp_path, "under_file": tmp_path / "afile" / "p.png",
            "read_only": tmp_path / "ro" / "p.png"}[case]
    if case == "read_only":
        (tmp_path / "ro").mkdir()
        real = tempfile.TemporaryFile

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == tmp_path / "ro":
                raise OSError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(predict_emotion, "recognizer", lambda args: pytest.fail("the model was loaded"))
    with pytest.raises(video.FervggError, match="`plot`"):
        predict_emotion.main(["--video", str(clip), "--plot", str(plot)])


def test_a_huge_camera_index_is_one_line():
    with pytest.raises(video.FervggError, match="camera index .* out of range"):
        video.open_video("99999999999999999999")


class FakeCapture:
    """A capture whose container timestamps are irregular (variable frame rate)."""

    def __init__(self, times_ms):
        self.times, self.i = times_ms, -1

    def grab(self):
        self.i += 1
        return self.i < len(self.times)

    def retrieve(self):
        return True, np.zeros((H, W, 3), np.uint8)

    def get(self, prop):
        return self.times[self.i] if prop == cv2.CAP_PROP_POS_MSEC else 0.0


def test_file_times_come_from_the_container_timestamps():
    times = [0.0, 100.0, 150.0, 400.0, 410.0]
    source = video.VideoSource("vfr.mov", FakeCapture(times), 10.0, 5, W, H, False)
    got = [t for _, t, _, _ in video.read_frames(source)]
    assert got == pytest.approx([t / 1000 for t in times])


def test_a_truncated_video_says_how_many_frames_were_read(tiny_model, fake_detector, tmp_path, capsys, monkeypatch):
    clip = write_clip(tmp_path / "clip.avi", frames=12)
    real = video.open_video

    def claims_twice_as_many(spec, max_pixels=None):
        source = real(spec, max_pixels)
        source.frame_count = 24
        return source

    monkeypatch.setattr(video, "open_video", claims_twice_as_many)
    code, out, err = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path))
    assert "12 of the 24 frames" in err and "truncated" in err, err


def test_a_one_frame_video_reports_the_faces_it_saw(tiny_model, fake_detector, tmp_path, capsys):
    clip = write_clip(tmp_path / "still.avi", frames=1)
    code, out, err = run_video(capsys, "--video", str(clip), "--model", str(tiny_model.path), "--csv")
    assert code == 0, err
    rows = csv_rows(out)
    assert len(rows) == 1 and rows[0]["track"] == "1", (out, err)
    assert "no face found" not in err and "still image" in err
