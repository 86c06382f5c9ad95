"""Which image files a list of command-line paths means: files, folders (searched
recursively) and glob patterns, in order, without duplicates."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from fervgg import config, imaging
from fervgg.common import FervggError, printable, same_path

GLOB_CHARS = set("*?[")
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def refuse_url(spec: str) -> None:
    """A URL given as an image path is named as such (Path() would mangle it into a missing
    file "https:/host/..."): nothing is downloaded."""
    if URL.match(spec):
        raise FervggError(f"{printable(spec)} is a URL: images are read from local files only; download it first")


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
        refuse_url(spec)
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


def check_output_folder(folder: Path, files: list[Path], setting: str) -> None:
    """Refuse, before any work, an output folder that holds any of the input `files` (its
    copies, named like the inputs, would replace them): FervggError naming `setting`."""
    for parent in dict.fromkeys(Path(f).parent for f in files):
        if same_path(parent, folder):
            example = next(f for f in files if Path(f).parent == parent)
            raise FervggError(f"{setting} {printable(folder)} holds input images (e.g. {printable(example)}): "
                              "the annotated copies would replace them; choose another folder")
