"""What every absl launcher shares: quiet logs, device info, and user errors without tracebacks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from absl import logging

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
