"""Files that several processes may touch at once: atomic writes and claims on directories.

``atomic_write_text`` never leaves a half-written file behind (a reader sees the old text or
the new, even if the writer is killed). ``claim(directory)`` is an exclusive, non-blocking
``fcntl`` lock that the operating system releases when its holder exits, however it exits: a
sweep claims each point before running it, so two sweeps on one workdir never run one point.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_write_text", "check_writable", "claim", "prepare_workdir"]

CLAIM_FILE = ".claim"


def atomic_write_text(path: str | pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    ``os.replace`` (atomic on POSIX): a reader never sees a partial file."""
    path = pathlib.Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def check_writable(directory: pathlib.Path) -> None:
    """Raise ``OSError`` if no file can be created in ``directory`` (a probe of a name unique to
    this call, so that processes probing one directory at once never collide)."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".write_test.")
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def claim(directory: str | pathlib.Path) -> Iterator[bool]:
    """``with claim(d) as mine:`` — ``mine`` is ``True`` if this call holds ``d``'s claim (made
    if needed) until the block ends, ``False`` if another holder (process or thread) has it."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CLAIM_FILE, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def prepare_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
    """``workdir`` made absolute and created; ``PermissionError`` naming it if not writable."""
    path = pathlib.Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        check_writable(path)
    except OSError as error:
        raise PermissionError(
            f"workdir={str(workdir)!r} is not writable ({error.strerror})"
        ) from None
    return path
