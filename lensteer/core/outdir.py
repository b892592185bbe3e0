"""Output folders: lensteer writes only into folders that are its own, one writer at a time.

:func:`claim_folder` is the one door every writer of an output folder goes through (``lensteer run``,
``lensteer organism``, ``lensteer report``; their library functions too). It refuses

* the working directory, the home folder and the file-system root, whatever they hold;
* an existing folder that is not empty and holds none of the writer's marker files (``study.json``
  for a study, ``organism.json`` for an organism ...): lensteer never writes into, or deletes, what it
  did not create;

and then takes an exclusive ``fcntl`` lock on ``OUT/.lock`` (holding the writer's pid), so a second
writer of the same folder is refused with an error naming the first one's pid instead of silently
overwriting its rows. The lock is re-entrant within a process (a study that trains an organism into
its own folder, a command that calls a library writer) and its file is removed when released.
"""

import fcntl
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lensteer.errors import ConfigError, LensteerError

LOCK_FILE = ".lock"
_HELD: dict[Path, int] = {}  # resolved folder -> how many claims this process holds on it
_HELD_LOCK = threading.Lock()


class FolderLockedError(LensteerError, RuntimeError):
    """Another process is writing the output folder (its pid is in the message)."""


def forbidden_reason(folder: Path) -> str | None:
    """Why ``folder`` may never be an output folder (``None``: it may)."""
    resolved = folder.expanduser().resolve()
    if resolved == Path(resolved.anchor):
        return "it is the file-system root"
    if resolved == Path.home().resolve():
        return "it is the home folder"
    if resolved == Path.cwd().resolve():
        return "it is the current working directory"
    return None


def check_output_folder(
    folder: "str | os.PathLike[str]", markers: Sequence[str], what: str, companions: Sequence[str] = ()
) -> Path:
    """``folder`` as a Path if lensteer may write a ``what`` there; a :class:`ConfigError` naming it and why not.

    Allowed: a folder that does not exist yet, one that is empty but for ``companions`` (what other
    lensteer commands write there by default, e.g. ``results/locate``), or one holding any of ``markers``
    (a ``what`` lensteer wrote there before).
    """
    path = Path(folder).expanduser()
    reason = forbidden_reason(path)
    if reason is None and path.exists() and not path.is_dir():
        reason = "it is a file, not a folder"
    if reason is None and path.is_dir():
        entries = [p.name for p in path.iterdir() if p.name != LOCK_FILE and p.name not in companions]
        if entries and not any((path / m).exists() for m in markers):
            shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
            reason = (
                f"it is not empty ({shown}) and holds no {' or '.join(markers)}, so it is no {what} "
                "lensteer wrote"
            )
    if reason is not None:
        raise ConfigError(
            f"output folder {str(folder)!r} refused: {reason}; lensteer never writes into (or "
            f"deletes) a folder it did not create. Give a new or empty folder"
        )
    return path


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid else "another process"


@contextmanager
def folder_lock(folder: "str | os.PathLike[str]") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/.lock`` (the folder is created if missing) for the block.

    Raises:
        FolderLockedError: Another process holds it (the message names its pid).
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    key = path.resolve()
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key] += 1
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield path
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    lock_path = path / LOCK_FILE
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(
                f"output folder {str(folder)!r} is being written by {_holder(lock_path)} "
                f"(lock {lock_path}); wait for it to finish or use another folder"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: lock the one on disk
            same = lock_path.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    with _HELD_LOCK:
        _HELD[key] = 1
    try:
        yield path
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        try:
            if lock_path.exists() and lock_path.stat().st_ino == os.fstat(fd).st_ino:
                lock_path.unlink()  # still locked: nobody can hold it in between
        finally:
            os.close(fd)


@contextmanager
def claim_folder(
    folder: "str | os.PathLike[str]", markers: Sequence[str], what: str, companions: Sequence[str] = ()
) -> Iterator[Path]:
    """Check ``folder`` may hold a ``what`` (:func:`check_output_folder`) and lock it for the block.

    A folder this call created and left empty is removed again when the block ends.
    """
    path = check_output_folder(folder, markers, what, companions)
    created = not path.exists()
    try:
        with folder_lock(path):
            yield path
    finally:
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
