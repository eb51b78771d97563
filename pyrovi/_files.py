"""Safe file writes, for checkpoints, the demo and the ArviZ export.

:func:`atomic_write` writes a file so that a reader sees the old content or the new one,
never a part, and so that nobody else can redirect the write:

* the content goes to a temporary file in the target's folder, created with an
  unpredictable name by :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``: an existing file
  or a planted symbolic link there makes the creation fail, it is never followed), then
  ``fsync``-ed and renamed over the target with :func:`os.replace` (which replaces a
  symbolic link at the target itself, never the file it points to);
* on any failure (a full disk, an exception, Ctrl-C) the temporary file is removed and the
  target is untouched;
* a process killed with ``kill -9`` leaves its temporary file behind: the temporary names
  carry a recognisable prefix and the writer's process id, and the next write into that
  folder removes those of processes that no longer run (:func:`remove_stale`).

:func:`check_inside` refuses a path that is, or passes through, a symbolic link leading
out of a folder (the demo's ``--out``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

__all__ = ["atomic_write", "atomic_path", "remove_stale", "check_inside", "TEMP_PREFIX"]

#: Prefix of every temporary file pyrovi creates next to a target.
TEMP_PREFIX = ".pyrovi-tmp-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else: leave its files alone
    return True


def remove_stale(folder: str) -> list[str]:
    """Remove pyrovi's temporary files in ``folder`` left by processes that no longer run
    (a writer killed with ``kill -9``); return their paths.  Symbolic links and files of
    running processes are left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        pid_part = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid_part.isdigit() or _pid_alive(int(pid_part)):
            continue
        full = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isfile(full) and not os.path.islink(full):
                os.remove(full)
                removed.append(full)
    return removed


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], None],
    *,
    opener: Callable[[int], IO[bytes]] | None = None,
) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a fresh temporary file in the same
    folder, which is then renamed over ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The target.  A symbolic link at ``path`` is replaced by the new file, never
        written through.
    write : callable
        ``write(fh)`` with ``fh`` a binary file object open for writing.
    opener : callable, optional
        ``opener(fd) -> file object`` (tests pass a failing one to simulate a full disk);
        default ``os.fdopen(fd, "wb")``.

    Raises
    ------
    OSError, or whatever ``write`` raises
        After removing the temporary file; the target is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a file")
    remove_stale(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=folder)
    owned = False  # whether the file object owns (and closes) the descriptor
    try:
        fh = (opener or _fdopen)(fd)
        owned = True
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if not owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """For a library that writes to a path itself (netCDF, say): yield the path of a fresh,
    empty temporary file in the target's folder (same guarantees as :func:`atomic_write`);
    when the block ends without an error it is renamed over ``path``, else removed."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a file")
    remove_stale(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _fdopen(fd: int) -> IO[bytes]:
    """The default opener of :func:`atomic_write`'s temporary file."""
    return os.fdopen(fd, "wb")


def check_inside(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` if it stays inside ``folder`` once symbolic links are resolved.

    Raises
    ------
    PermissionError
        When ``path`` (or a folder on the way) is a symbolic link that leads out of
        ``folder``.
    """
    path, folder = os.fspath(path), os.fspath(folder)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([real, real_folder]) != real_folder:
        raise PermissionError(
            f"{path!r} is a symbolic link (or lies under one) that leads to {real!r}, "
            f"outside {folder!r}; refusing to write through it. Remove the link."
        )
    return path
