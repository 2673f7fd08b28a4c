"""What every absl launcher shares: flag and user errors as one line (no traceback), devices,
and the opt-in CPU tuning (``--cpu_tune``, on by default; see ``attnjax.perf.cpu``).

A launcher ends with ``common.run(main)``.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable

from absl import app, flags, logging

# Errors caused by what the user asked for: reported as one line and exit code 1. A NaN loss
# (FloatingPointError) comes from the settings too (learning rate, init, precision).
USER_ERRORS = (
    ValueError, KeyError, AttributeError, FileNotFoundError, PermissionError, OSError,
    FloatingPointError,
)  # fmt: skip


CPU_TUNE = flags.DEFINE_bool(
    "cpu_tune", True, "Apply attnjax.perf.cpu's process-wide tuning (glibc malloc) before main."
)


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
    override = _override_naming(text, argv)
    if override:
        return _undeclared_key_message(override, argv)
    return " ".join(text.split())


def _override_naming(key: str, argv: list[str]) -> str | None:
    """The ``--config.a.key`` override whose last part is ``key`` (a bare config key), if any."""
    if not key.isidentifier():
        return None
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and "." in name and name.rsplit(".", 1)[1] == key:
            return name
    return None


def _undeclared_key_message(override: str, argv: list[str]) -> str:
    """``--config.model.dtype`` of a config file without ``model.dtype``: say so and list the
    keys ``config.model`` has (the config file is loaded again to read them)."""
    flag, *path = override[2:].split(".")
    parent = ".".join([flag, *path[:-1]])
    message = f"unknown config key {path[-1]!r} (in {override}): the config file does not have it"
    try:
        source = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
        source = source or ast.literal_eval(flags.FLAGS[flag].default_as_str)
        config = flags.FLAGS[flag].parser.parse(source)
        for name in path[:-1]:
            config = config[name]
        return f"{message}; {parent} has: {', '.join(sorted(config.keys()))}"
    except Exception:  # noqa: BLE001 - the plain message is still right
        return message


def parse_flags_cleanly(argv: list[str]) -> list[str]:
    """``app.run(main, flags_parser=parse_flags_cleanly)``: like absl's parser, but any error
    while parsing (unknown flag, misspelled config key, bad value, bad variant) is printed as
    ``error: …`` on stderr with exit code 1, never a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001 - everything here is a user error
        print(f"error: {_message(error, argv)}", file=sys.stderr)
        sys.exit(1)


def tuned(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Wrap an absl ``main`` so ``attnjax.perf.cpu.tune()`` runs first, unless
    ``--cpu_tune=false``."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> None:
        if CPU_TUNE.value:
            from attnjax.perf import cpu

            logging.debug("attnjax.perf.cpu.tune(): %s", cpu.tune())
        main(argv)

    return wrapped


def run(main: Callable[[list[str]], None]) -> None:
    """``app.run`` with clean flag errors and clean user errors (both exit 1, one line), after
    the CPU tuning that ``--cpu_tune`` asks for."""
    app.run(user_errors_exit_cleanly(tuned(main)), flags_parser=parse_flags_cleanly)
