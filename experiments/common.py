"""What every absl launcher shares: flag and user errors as one line (no traceback), devices.

A launcher ends with ``common.run(main)``.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable

from absl import app, flags, logging

# Errors caused by what the user asked for: reported as one line and exit code 1.
USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, PermissionError, OSError)


def user_errors_exit_cleanly(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Wrap an absl ``main`` so a bad config or path prints ``error: …`` and exits 1."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except USER_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)

    return wrapped


def log_devices() -> None:
    import jax

    logging.info("JAX %s on %s: %s", jax.__version__, jax.default_backend(), jax.devices())


def _message(error: BaseException, argv: list[str]) -> str:
    if isinstance(error, flags.Error):
        text = str(error)
        if "Traceback (most recent call last)" in text:  # an exception inside get_config
            head = text.partition(":")[0]
            last = [line for line in text.splitlines() if line.strip()][-1]
            return f"{head}: {last.strip()}"
        return f"{text} (see --helpshort)"
    text = str(error.args[0]) if error.args else str(error)
    try:  # ml_collections nests repr()s of KeyError messages
        while text[:1] in "'\"" and text[-1:] == text[:1]:
            text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if "Did you mean" in text:
        key, _, hint = text.partition("\n")
        key = key.strip("'\"")
        used = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a]
        where = f" (in {used[0]})" if used else ""
        return f"unknown config key {key!r}{where}; {hint[0].lower()}{hint[1:]}"
    return " ".join(text.split())


def parse_flags_cleanly(argv: list[str]) -> list[str]:
    """``app.run(main, flags_parser=parse_flags_cleanly)``: like absl's parser, but any error
    while parsing (unknown flag, misspelled config key, bad value, bad variant) is printed as
    ``error: …`` on stderr with exit code 1, never a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - everything here is a user error
        print(f"error: {_message(error, argv)}", file=sys.stderr)
        sys.exit(1)


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run`` with clean flag errors and clean user errors (both exit 1, one line)."""
    app.run(user_errors_exit_cleanly(main), flags_parser=parse_flags_cleanly)
