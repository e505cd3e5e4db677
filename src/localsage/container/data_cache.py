"""The decoded-image cache: epochs after the first read the pixels `decode` returned instead of decoding.

Reading a photo's decoded pixels back from the page cache costs a fraction of decoding it again
(docs/performance.md). The cache holds exactly what `decode` returned (upright, HWC), so
a cached and an uncached epoch see bit-identical images. One file per (image path, size, mtime,
draft size, format version); a changed source file gets a new key.

Safety (the cache lives in a shared /tmp by default):
- the folder is per user, <tmp>/localsage-cache-<uid> (or $LOCALSAGE_CACHE_DIR), created 0700; a
  folder that is a symlink, belongs to another user or grants any group/other permission is refused
  and the cache turns itself off for the job (with a warning): nobody else can read the pixels or
  plant entries that would poison training;
- entries are written to a fresh temp file (mkstemp: O_CREAT|O_EXCL, mode 0600, never a planted
  symlink), then renamed into place, so workers, DDP ranks and concurrent tuning trials share the
  folder safely and a reader never sees half an entry;
- entries are opened with O_NOFOLLOW and must be regular files of exactly the size their header
  gives; any OSError or bad header (a directory, unreadable, truncated, foreign) is a cache miss:
  the image is decoded again, never counted as unreadable.

It pays for itself only when the decoded set stays in the page cache (decoded photos are ~10-15x
their JPEG size; read back from disk they are no faster than decoding), so `plan_cache` turns it off
when the estimate exceeds the memory available, or the disk's free space.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from localsage.container.decode import as_hwc, decode

log = logging.getLogger("localsage.container.data")

MAGIC = b"LSD2"  # entry layout: MAGIC, uint32 height, width, channels, then HWC uint8 pixels
HEADER = 16
ENTRY_HEADER = struct.Struct("<4sIII")
VERSION = "hwc-exif-2"  # part of every key: entries of an older layout are never read


class CacheUnsafe(OSError):
    pass


def cache_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"localsage-cache-{os.getuid()}"
    return Path(os.environ.get("LOCALSAGE_CACHE_DIR") or default)


def private_dir(root: Path) -> Path:
    """Create root 0700 if missing; raise CacheUnsafe unless it is our own, private, real folder."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise CacheUnsafe(f"{root} is not a folder (a symlink or a file)")
    if st.st_uid != os.getuid():
        raise CacheUnsafe(f"{root} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})")
    if st.st_mode & 0o077:
        raise CacheUnsafe(f"{root} has mode {stat.S_IMODE(st.st_mode):o}: group/other may read or plant entries "
                          f"(chmod 700 it, or point LOCALSAGE_CACHE_DIR elsewhere)")
    return root


def cache_estimate(paths) -> int:
    """Bytes the decoded cache needs for these files (JPEG photos decode to ~10-15x their size)."""
    return sum(os.stat(p).st_size for p in paths) * 15


def memory_available() -> int | None:
    """MemAvailable from /proc/meminfo (free memory plus reclaimable page cache), or None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_cache(paths_by_split: dict, mode: str):
    """The cache folder to use, or None (mode off, an unsafe folder, too little free disk or memory: logged)."""
    if mode == "off":
        return None
    root = cache_dir()
    try:
        private_dir(root)
    except OSError as exc:
        log.warning("decoded-image cache off: %s", exc)
        return None
    need = sum(cache_estimate(p) for p in paths_by_split.values())
    free = shutil.disk_usage(root).free
    if free < need + 2**30:
        log.warning("decoded-image cache off: %s has %.1f GB free, the cache needs about %.1f GB (+1 GB margin); "
                    "set LOCALSAGE_CACHE_DIR to a larger disk", root, free / 1e9, need / 1e9)
        return None
    avail = memory_available()
    if avail is not None and need > avail:
        log.warning("decoded-image cache off: it needs about %.1f GB, more than the %.1f GB of memory available "
                    "to keep it in the page cache (read back from disk it is no faster than decoding)",
                    need / 1e9, avail / 1e9)
        return None
    log.info("decoded-image cache: %s (up to about %.1f GB)", root, need / 1e9)
    return root


def cache_key(path: str, draft_size, st=None) -> str:
    import hashlib

    st = st or os.stat(path)
    ident = f"{VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{draft_size or 0}"
    return hashlib.sha1(ident.encode()).hexdigest()


_ENTRIES = {}  # (root, path, draft size) -> (size, mtime_ns, entry path): one hash a file, not one a read


def entry_path(root: Path, path: str, draft_size) -> Path:
    """The entry of `path` (its size and mtime in the key: a changed source is a new entry). The source
    is stat'ed on every call; the key's hash and the path are remembered while those stay the same."""
    st = os.stat(path)
    known = _ENTRIES.get((root, path, draft_size))
    if known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns:
        return known[2]
    key = cache_key(path, draft_size, st)
    file = Path(root) / key[:2] / f"{key}.hwc"
    if len(_ENTRIES) >= 1_000_000:  # a bound, far past any dataset one process reads
        _ENTRIES.clear()
    _ENTRIES[(root, path, draft_size)] = (st.st_size, st.st_mtime_ns, file)
    return file


class ReadBuffer:
    """A read buffer one process reuses for entry after entry: no allocation and no fresh zeroed
    pages an image (read_entry's `into`). A view of it is valid until the buffer's next use."""

    def __init__(self):
        self.buf = bytearray()

    def get(self, size: int) -> memoryview:
        if len(self.buf) < size:  # replaced, not resized: a view of the old one may still be alive
            self.buf = bytearray(max(size, len(self.buf) * 5 // 4))
        return memoryview(self.buf)[:size]


def read_entry(file: Path, into: ReadBuffer | None = None):
    """The pixels of one entry as a CHW view of HWC memory, or None for any kind of miss; read into
    `into` when given (see ReadBuffer)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size <= HEADER:
            return None
        buf = bytearray(size) if into is None else into.get(size)
        if os.readv(fd, [buf]) != size:
            return None
        magic, h, w, c = ENTRY_HEADER.unpack_from(buf)
        if magic != MAGIC or c != 3 or size != HEADER + h * w * 3:
            return None
        return torch.frombuffer(buf, dtype=torch.uint8, offset=HEADER).view(h, w, 3).permute(2, 0, 1)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def write_entry(file: Path, img: torch.Tensor) -> None:
    """Write one entry through a private temp file and a rename. Raises OSError."""
    file.parent.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            c, h, w = img.shape
            f.write(MAGIC + np.array([h, w, c], dtype="<u4").tobytes())
            f.write(memoryview(img.permute(1, 2, 0).contiguous().numpy()).cast("B"))
        os.replace(tmp, file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def cached_decode(path: str, draft_size, root: Path, into: ReadBuffer | None = None) -> torch.Tensor:
    """`decode`, read from / written to the cache under root (any problem with an entry: decode again).
    `into`: see `read_entry` (a cached image is then a view of that buffer)."""
    try:
        file = entry_path(root, path, draft_size)
    except OSError:
        return decode(path, draft_size)  # the source itself is gone: decode raises the real error
    img = read_entry(file, into)
    if img is not None:
        return img
    img = as_hwc(decode(path, draft_size))
    try:
        write_entry(file, img)
    except OSError as exc:  # a full disk slows training down, it does not stop it
        log.warning("could not write the decoded-image cache (%s): %s", file, exc)
    return img
