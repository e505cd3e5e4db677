"""S3 objects persisted: moto keeps them in memory only, so every object is also a file pair under
`<root>/s3/<bucket>/objects/`: `<sha256 of the key>.data` (the bytes) and `.json` (key, ETag, metadata, last
modified), and each bucket a `bucket.json`. No key becomes a path (only its hash does) and a bucket folder is
made only for a name that passes S3's bucket rule, so nothing can reach outside the folder. At start
`restore` puts everything back into moto; after each request that may change a bucket the server calls
`sync_key` or `sync_bucket`, which compare moto's state with what is on disk and write the difference."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
from datetime import datetime
from pathlib import Path

from localsage.core.files import atomic_write, atomic_write_json

LOG = logging.getLogger("localsage.api")
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's rule for bucket names


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _stamp(fake_key) -> tuple:
    return fake_key.etag, fake_key.last_modified.isoformat()


class Mirror:
    def __init__(self, folder: Path, backend):
        self.folder = Path(folder)
        self._backend = backend  # a callable: moto's S3 backend for our account
        self._seen: dict[str, dict[str, tuple]] = {}  # bucket -> key -> stamp of what is on disk
        self._lock = threading.RLock()

    # -- start -----------------------------------------------------------------------------------------------
    def restore(self, region: str) -> int:
        """Put every mirrored bucket and object back into moto; returns the number of objects."""
        count = 0
        backend = self._backend()
        for meta_path in sorted(self.folder.glob("*/bucket.json")):
            bucket = meta_path.parent.name
            if not BUCKET_PATTERN.fullmatch(bucket):
                continue
            if bucket not in backend.buckets:
                backend.create_bucket(bucket, _read(meta_path).get("region") or region)
            seen = self._seen.setdefault(bucket, {})
            for meta_file in sorted((meta_path.parent / "objects").glob("*.json")):
                meta, data_file = _read(meta_file), meta_file.with_suffix(".data")
                if not meta.get("key") or not data_file.is_file():
                    continue  # a write a kill cut short: the data goes first, the record second
                etag = meta.get("etag", "").strip('"')
                fake = backend.put_object(bucket, meta["key"], data_file.read_bytes(),
                                          etag=etag if "-" in etag else None, disable_notification=True)
                fake.set_metadata(dict(meta.get("metadata") or {}))
                if meta.get("last_modified"):
                    fake.last_modified = datetime.fromisoformat(meta["last_modified"])
                seen[meta["key"]] = _stamp(fake)
                count += 1
        return count

    # -- after a change --------------------------------------------------------------------------------------
    def sync_key(self, bucket: str, key: str) -> None:
        """Mirror one object as moto has it now: written, rewritten or removed."""
        with self._lock:
            moto_bucket = self._backend().buckets.get(bucket)
            if moto_bucket is None:
                self.sync_bucket(bucket)
                return
            if not self._bucket_dir(bucket, moto_bucket):
                return
            current = moto_bucket.keys.get(key)
            if _is_object(current):
                self._write(bucket, key, current)
            else:
                self._remove(bucket, key)

    def sync_bucket(self, bucket: str) -> None:
        """Mirror a whole bucket (made, emptied, deleted, many keys at once)."""
        with self._lock:
            moto_bucket = self._backend().buckets.get(bucket)
            if moto_bucket is None:
                self._seen.pop(bucket, None)
                if BUCKET_PATTERN.fullmatch(bucket):
                    shutil.rmtree(self.folder / bucket, ignore_errors=True)
                return
            if not self._bucket_dir(bucket, moto_bucket):
                return
            live = {k: v for k, v in moto_bucket.keys.items() if _is_object(v)}
            for key in set(self._seen.get(bucket, {})) - set(live):
                self._remove(bucket, key)
            for key, fake in live.items():
                self._write(bucket, key, fake)

    def sync_all(self) -> None:
        with self._lock:
            for bucket in set(self._seen) | set(self._backend().buckets):
                self.sync_bucket(bucket)

    # -- files -----------------------------------------------------------------------------------------------
    def _bucket_dir(self, bucket: str, moto_bucket) -> Path | None:
        if not BUCKET_PATTERN.fullmatch(bucket):
            LOG.warning("bucket %r is not a valid S3 bucket name: it is not kept across a restart", bucket[:80])
            return None
        folder = self.folder / bucket
        if bucket not in self._seen:
            (folder / "objects").mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "bucket.json", {"name": bucket, "region": moto_bucket.region_name})
            self._seen[bucket] = {}
        return folder

    def _write(self, bucket: str, key: str, fake) -> None:
        seen = self._seen.setdefault(bucket, {})
        try:
            stamp = _stamp(fake)
            if seen.get(key) == stamp:
                return
            base = self.folder / bucket / "objects" / key_id(key)
            atomic_write(base.with_suffix(".data"), lambda f: _copy_value(fake, f))
        except ValueError:  # replaced or deleted meanwhile (moto closed its buffer): the next sync writes it
            return
        atomic_write_json(base.with_suffix(".json"), {
            "key": key, "etag": stamp[0], "last_modified": stamp[1], "size": fake.size,
            "metadata": {str(k): str(v) for k, v in dict(fake.metadata).items()}})
        seen[key] = stamp

    def _remove(self, bucket: str, key: str) -> None:
        base = self.folder / bucket / "objects" / key_id(key)
        for suffix in (".json", ".data"):  # the record first: a half-removed pair is never restored
            base.with_suffix(suffix).unlink(missing_ok=True)
        self._seen.get(bucket, {}).pop(key, None)


def _is_object(value) -> bool:
    return value is not None and hasattr(value, "etag") and hasattr(value, "set_metadata")  # not a delete marker


def _copy_value(fake, out) -> None:
    """Stream moto's spooled buffer to the file (a model tarball need not sit in memory twice)."""
    buffer, lock = getattr(fake, "_value_buffer", None), getattr(fake, "lock", None)
    if buffer is None or lock is None:
        out.write(fake.value)
        return
    with lock:
        buffer.seek(0)
        shutil.copyfileobj(buffer, out, 1 << 20)


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}
