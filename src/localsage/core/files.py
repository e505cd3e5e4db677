"""Durable writes, in one place: every file a reader may race or a kill may tear goes through here.

- `atomic_write(path, data)`: a uniquely named temp file in the same folder (mkstemp: O_EXCL, no
  symlink followed), fsync, then os.replace: readers see the old file or the new one, never half of
  one, and two writers never share a temp file.
- `append_line(path, line)`: one whole line per write(2) on an O_APPEND descriptor, fsync'd; a line
  torn by an earlier kill is closed first so the next row is not glued to it (readers skip it).
- `clean_temp(folder)`: removes temp files a killed writer left (run before a job starts or resumes,
  so they are never mistaken for, or synced to S3 as, checkpoints).

Foundations: imports nothing from localsage and nothing heavy (the CLI and the container use it).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

TEMP_SUFFIX = ".partial"  # every temp file is ".<name>.<random>.partial"

Data = Union[bytes, str, Callable]


def temp_name(path: Path) -> str:
    return f".{Path(path).name}."


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_write(path, data: Data, mode: int | None = None) -> Path:
    """Write bytes, text (UTF-8) or `data(fileobj)` to path atomically; returns path.

    The file gets mode 0666 & ~umask (as open() would), or `mode` when given."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fchmod(f.fileno(), _default_mode() if mode is None else mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path, obj, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return atomic_write(path, json.dumps(obj, **dump_kwargs))


def append_line(path, line: str) -> None:
    """Append one line (newline added) with a single write, then fsync."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        prefix = b""
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:  # a torn last line (killed writer): end it first
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    prefix = b"\n"
        os.write(fd, prefix + line.rstrip("\n").encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path) -> list:
    """The rows of a JSON-lines file; a missing file is empty, a torn or garbled line is skipped."""
    rows = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    rows.append(json.loads(raw))
                except ValueError:  # json.JSONDecodeError and UnicodeDecodeError
                    continue
    except FileNotFoundError:
        return []
    return rows


def clean_temp(*folders, recursive: bool = True) -> list:
    """Remove leftover temp files of atomic_write (and the older '.name.tmp*' form); returns them."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for child in (folder.rglob(".*") if recursive else folder.glob(".*")):
            if child.is_file() and (is_temp(child.name) or ".tmp" in child.name):
                try:
                    child.unlink()
                    removed.append(child)
                except OSError:
                    pass
    return removed


def _default_mode() -> int:
    try:  # /proc tells the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
