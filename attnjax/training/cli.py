"""Flag parsing for absl launchers: a bad ``--config`` prints one line and exits 1."""

from __future__ import annotations

import ast
import sys

from absl import flags

__all__ = ["parse_flags_cleanly"]


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
