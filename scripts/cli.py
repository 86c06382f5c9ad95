"""What every script shares on the command line: the help layout, checked numeric flags,
and run_cli, which turns our errors into one line and an exit code. (The package below
knows nothing of flags: its messages name settings `like_this`, shown here as --like-this.)"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from typing import Callable

from fervgg.common import DISK_ERRORS, FervggError
from fervgg.settings import out_of_range

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except for on/off switches and unset options, where they mislead;
    keeps the line breaks of descriptions and epilogs as written."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def number(kind: type = float, low: float | None = None, high: float | None = None, *,
           above: float | None = None, below: float | None = None) -> Callable[[str], float]:
    """An argparse `type`: a finite int or float within bounds (low/high inclusive,
    above/below exclusive), so "nan", "inf" and out-of-range values are refused with
    one line before any work starts."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        problem = out_of_range(value, low, high, above=above, below=below)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} is {problem}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def parse_settings(parser: argparse.ArgumentParser, argv, make: Callable, flags: dict[str, str] | None = None):
    """The parsed flags as settings, make(**parsed flags) (a settings dataclass); a value the
    settings refuse is a usage error like argparse's own, named as a flag."""
    args = parser.parse_args(argv)
    try:
        return make(**vars(args))
    except FervggError as exc:
        parser.error(as_flags(str(exc), flags))


def as_flags(message: str, flags: dict[str, str] | None = None) -> str:
    """A package message with its settings (`like_this`) named as this script's flags."""
    flags = flags or {}
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")),
                  message)


def run_cli(main: Callable[[], int | None], flags: dict[str, str] | None = None) -> None:
    """Run a script's main() and turn errors into one clear line and an exit code.
    `flags`: settings whose flag is not --setting-name (e.g. {"image_paths": "--image_path"}).

    SIGTERM is treated like Ctrl+C so that `kill` also goes through the clean-up path.
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        code = main()
    except FervggError as exc:
        print(f"error: {as_flags(str(exc), flags)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing half-written was left on disk.", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; files are written atomically, so what was there "
              "before is intact", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
