"""Image-folder datasets: DIR/<class>/<images>, found, decoded in parallel, labelled.

Used by preprocessing (to build the arrays) and evaluation of an image folder (to
evaluate it directly), so both decode every file the same way.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fervgg.artifacts import Split
from fervgg.common import FervggError, printable
from fervgg.imaging import BadImage, list_files, load_gray

PARALLEL_MIN_FILES = 256  # below this a process pool costs more than it saves
IMAGES_SPLIT = "images"  # the split name of a whole-folder evaluation


class _Progress(tqdm):
    """tqdm without its monitor thread, which forked workers would inherit half-way
    (deadlock risk); a subclass, so tqdm's other users keep theirs."""
    monitor_interval = 0


def class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _decode_batch(job: tuple[list[str], int]) -> tuple[bytes, dict[int, str]]:
    """Decode a batch of files in a worker: one bytes buffer back, plus failures by position."""
    paths, size = job
    out = bytearray(len(paths) * size * size)
    failures = {}
    for i, path in enumerate(paths):
        try:
            out[i * size * size:(i + 1) * size * size] = load_gray(path, size).tobytes()
        except BadImage as exc:
            failures[i] = str(exc)
    return bytes(out), failures


def _worker_signals() -> None:
    """Workers leave Ctrl+C and SIGTERM to the parent, which stops them cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def decode_all(paths: list[Path], size: int, workers: int, desc: str, batch: int = 256):
    """Decode every path; returns (uint8 array (n_ok, size, size), ok mask, {index: reason})."""
    jobs = [([str(p) for p in paths[i:i + batch]], size) for i in range(0, len(paths), batch)]
    pixels = np.empty((len(paths), size, size), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)
    reasons: dict[int, str] = {}
    pool = None
    if workers > 1 and len(paths) >= PARALLEL_MIN_FILES:
        # fork: workers start at once; no TensorFlow or other threads are loaded here.
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    try:
        results = pool.imap(_decode_batch, jobs) if pool else map(_decode_batch, jobs)
        with _Progress(total=len(paths), desc=desc, unit="img", file=sys.stderr,
                  dynamic_ncols=True, disable=None, mininterval=0.5) as bar:
            for b, (data, failures) in enumerate(results):
                start = b * batch
                n = len(jobs[b][0])
                pixels[start:start + n] = np.frombuffer(data, dtype=np.uint8).reshape(n, size, size)
                for i, reason in failures.items():
                    ok[start + i] = False
                    reasons[start + i] = reason
                bar.update(n)
        if pool:
            # close+join, not terminate: terminate can deadlock on idle workers holding the queue lock.
            pool.close()
            pool.join()
    except BaseException:
        if pool:
            pool.terminate()
        raise
    return pixels[ok], ok, reasons


# ---------------------------------------------------------------- a folder to evaluate

SHOWN_FOLDERS = 5  # unknown folders named in the warning; the count says how many in all


class ImageFolder:
    """An image-folder dataset DIR/<class>/*, decoded on demand at the sizes models need.

    Decoding is decode_all's (imaging.load_gray per file), so pixels are exactly those
    preprocessing produces.
    """

    def __init__(self, root: Path, workers: int):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FervggError(f"image folder not found: {self.root} (`images` expects DIR/<class>/<images>)")
        self.workers = workers
        self.folders = {name: list_files(self.root / name) for name in class_folders(self.root)}
        self.loose = [p for p in sorted(self.root.iterdir()) if p.is_file() and not p.name.startswith(".")]
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray, dict[int, str]]] = {}

    def mapping(self, class_names: list[str]) -> tuple[dict[str, int], list[str]]:
        """{folder: class index} of the folders named like a class, and the unknown folders."""
        index = {c.strip().lower(): i for i, c in enumerate(class_names)}
        known = {f: index[f.strip().lower()] for f in self.folders if f.strip().lower() in index}
        unknown = [f for f in self.folders if f not in known]
        if not known:
            hint = ""
            nested = [f for f in self.folders
                      if any(c.lower() in index for c in _subfolders(self.root / f))]
            if nested:
                hint = f"; did you mean `images` {self.root / nested[0]}?"
            raise FervggError(f"no folder in {self.root} is named like one of the model's classes "
                            f"{class_names} (found: {sorted(self.folders) or 'no folders'}){hint}")
        return known, unknown

    def paths(self) -> list[Path]:
        return [p for name in sorted(self.folders) for p in self.folders[name]]

    def decode(self, size: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Every file of every folder at `size`: (pixels (N,S,S) of all files, ok mask, reasons)."""
        if size not in self._decoded:
            # Forking a pool once TensorFlow runs threads risks deadlocks: decode in-process then.
            workers = 1 if "tensorflow" in sys.modules else self.workers
            paths = self.paths()
            pixels, ok, reasons = decode_all(paths, size, workers, f"decoding {self.root.name}")
            full = np.zeros((len(paths), size, size), dtype=np.uint8)
            full[ok] = pixels
            self._decoded[size] = (full, ok, reasons)
        return self._decoded[size]

    def for_model(self, class_names: list[str], size: int) -> Split:
        known, unknown = self.mapping(class_names)
        pixels, ok, reasons = self.decode(size)
        paths = self.paths()
        folder_of = [name for name in sorted(self.folders) for _ in self.folders[name]]
        labels = np.array([known.get(f, -1) for f in folder_of], dtype=np.int64)
        use = ok & (labels >= 0)
        skipped = {f: len(self.folders[f]) for f in unknown}
        if skipped:
            shown = ", ".join(f"{printable(f)}/ ({n} files)" for f, n in list(skipped.items())[:SHOWN_FOLDERS])
            more = f" and {len(skipped) - SHOWN_FOLDERS} more" if len(skipped) > SHOWN_FOLDERS else ""
            print(f"warning: {len(skipped)} folder(s) in {self.root} match no class of the model "
                  f"{class_names} and are skipped: {shown}{more} (all in the evaluation's metrics.json)",
                  file=sys.stderr)
        if self.loose:
            print(f"warning: {len(self.loose)} file(s) directly in {self.root} (not in a class folder) "
                  "are skipped", file=sys.stderr)
        bad = [{"path": str(paths[i]), "reason": r} for i, r in sorted(reasons.items()) if labels[i] >= 0]
        if bad:
            print(f"warning: {len(bad)} unreadable file(s) skipped:", file=sys.stderr)
            for b in bad[:10]:
                print(f"  {b['path']}: {b['reason']}", file=sys.stderr)
            if len(bad) > 10:
                print(f"  ... {len(bad) - 10} more in the evaluation's metrics.json", file=sys.stderr)
        if not use.any():
            raise FervggError(f"no readable images in the class folders of {self.root}")
        missing = [c for i, c in enumerate(class_names) if i not in known.values()]
        if missing:
            print(f"warning: no folder in {self.root} for the classes {missing}: their support is 0",
                  file=sys.stderr)
        return Split(IMAGES_SPLIT, pixels[use][..., None], labels[use], list(class_names), {
            "source": "image folder", "dir": str(self.root.resolve()),
            "folders": {f: class_names[i] for f, i in sorted(known.items())},
            "classes_without_folder": missing,
            "skipped_folders": skipped,
            "skipped_loose_files": [str(p) for p in self.loose],
            "bad_files": bad,
            "paths": [str(p) for p, u in zip(paths, use) if u],
        })


def _subfolders(folder: Path) -> list[str]:
    try:
        return [d.name for d in folder.iterdir() if d.is_dir()]
    except OSError:
        return []
