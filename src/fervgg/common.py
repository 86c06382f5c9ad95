"""Small helpers shared across the package: the error type, atomic writes, checksums, the
messages and checks several modules share."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class FervggError(Exception):
    """Any problem of ours a user can fix (a bad input, a missing or damaged file): the
    message is one line. The scripts print it (settings named `like_this` become flags)
    and exit 2."""


# Write failures a user can fix (free space, permissions): one line, not a traceback.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}



def import_tensorflow():
    """Import TensorFlow and Keras with their start-up banners silenced.

    TF 2.21 prints "oneDNN custom operations are on" through absl before any setting is
    read (TF_CPP_MIN_LOG_LEVEL does not stop it), so stderr is muted at the fd level for
    the import only. Python errors raised by the import still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TF leaves oneDNN off on some x86 CPUs (AVX2-only AMD EPYC: 12.4 -> 18.6 img/s training
    # with it on, measured); a user's own setting wins.
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with redirected_stderr(os.devnull):
        import keras  # noqa: F401
        import tensorflow
    return tensorflow


SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd")


def cpu_description() -> str:
    """CPU model, usable cores and the instruction sets that decide TensorFlow's speed."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    found = [f for f in SPEED_FLAGS if f in flags]
    return f"{model}, {cpu_count()} cores" + (f", {' '.join(found)}" if found else "")


def cpu_count() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def onednn_enabled() -> bool | None:
    """Is TensorFlow's oneDNN on (None: cannot tell)? Call after import_tensorflow()."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    """Write through `write(fileobj)` into a temporary file beside `path`, then rename.

    A crash or Ctrl+C leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))


def atomic_write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save_keras(model, path: Path) -> None:
    """model.save() into a temporary .keras file beside `path`, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temporary(path)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unique_temporary(path: Path) -> Path:
    """A temporary name beside `path`, with its suffix (some writers choose the format by
    it), that no other process or thread writing the same file at once will use."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: Path, holder: str, setting: str = "`models_dir`"):
    """Hold `folder`'s lock (an flock on <folder>/.lock, released by the kernel if the process
    dies) while a run writes there; `holder` (e.g. "training run run-1") is written in the lock
    file so that a second run is refused in one line naming it and its process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    import fcntl

    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            raise FervggError(f"{setting} {folder} is in use by {other}: wait for it to finish, or use "
                              f"another {setting}") from None
        def describe(text: str) -> None:  # what holds it, once that is known (e.g. the run's name)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{text} (pid {os.getpid()}, since {since})".encode(), 0)

        since = utc_now()
        describe(holder)
        try:
            yield describe
        finally:
            os.ftruncate(fd, 0)  # released: the file says nothing of a run that is gone
    finally:
        os.close(fd)  # releases the lock


def writable_folder(path: Path, setting: str) -> Path:
    """Check, before any long work, that files can be written in `path` or, if it does not
    exist yet, that it can be created (nothing is created); returns the nearest existing
    folder. A FervggError naming the setting (e.g. "`out_dir`") otherwise."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise FervggError(f"{setting} {path} {where}, not a folder")
    try:
        if existing == path:
            with tempfile.TemporaryFile(dir=path):
                pass
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        elif os.statvfs(existing).f_flag & os.ST_RDONLY:  # root may "access" a read-only disk
            raise OSError(errno.EROFS, "Read-only file system")
    except OSError as exc:
        raise FervggError(f"cannot write to {setting} {path}: {exc.strerror or exc}") from None
    return existing


def same_path(a: Path, b: Path) -> bool:
    """Do `a` and `b` name one file or folder? Resolved paths (symlinks, "a/../a") and, when
    both exist, inodes (hard links, bind mounts) are compared."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one does not exist (yet)
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FervggError(f"{what} not found: {path}")
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FervggError(f"{what} is not readable JSON ({path}): {first_line(exc, 120)}") from None


def loads_json(text: str):
    """json.loads, with nesting too deep for Python's parser (e.g. 200,000 "[") a ValueError
    like any other malformed JSON rather than a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def printable(text) -> str:
    """A path (or any text) fit for one line of output: control characters such as a newline
    in a file name are escaped (\\n), everything else is left as it is."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def model_not_found(path: Path) -> FervggError:
    return FervggError(f"model not found: {path} (train one with scripts/model_training.py, or pass `model` PATH)")


def check_gray_input(shape, where) -> int:
    """S of a model input shape (N, S, S, 1); FervggError for anything else."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[3] != 1 or shape[1] != shape[2] or not isinstance(shape[1], int):
        raise FervggError(f"{where}: input shape {shape} is not (N, S, S, 1) square grayscale images "
                        "as the models of model_training.py take")
    return int(shape[1])


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions(*modules: str) -> dict:
    """Python's version and those of the named modules (imported ones only cost nothing)."""
    import importlib

    versions = {"python": platform.python_version()}
    for name in modules:
        module = importlib.import_module(name)
        versions[{"sklearn": "scikit-learn", "PIL": "pillow"}.get(name, name)] = module.__version__
    return versions


@contextlib.contextmanager
def redirected_stderr(target: str | int):
    """Point file descriptor 2 (where native code writes) at a path or an open fd for the
    duration; Python's sys.stderr is flushed first so nothing is reordered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded, a test capturing fd 2)
        yield
        return
    fd = os.open(target, os.O_WRONLY) if isinstance(target, str) else target
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if isinstance(target, str):
            os.close(fd)


@contextlib.contextmanager
def filtered_stderr(*noise: str):
    """Capture what native code writes to file descriptor 2 for the duration; pass on every
    line that contains none of `noise` (known, harmless log lines users cannot act on)."""
    with tempfile.TemporaryFile() as capture:
        with redirected_stderr(capture.fileno()):
            yield
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line and not any(n in line for n in noise)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain left/right aligned text table (numbers right-aligned)."""
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            numeric = n > 0 and _is_number(cell)
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
        return True
    except ValueError:
        return False
