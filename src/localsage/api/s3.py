"""`api.s3`: the operations' door to S3 (moto's backend in this process), with every change mirrored to disk
(s3_mirror.py). Jobs read their inputs and write their outputs through it: `download` materialises an object or
a prefix (S3Prefix semantics: every key under it, its path relative to the prefix kept) into a folder, and no
key with a '..' or absolute part is written anywhere."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from localsage.api.aws import ACCOUNT, REGION
from localsage.api.errors import validation
from localsage.api.s3_mirror import BUCKET_PATTERN, Mirror


def parse(s3_uri: str) -> tuple[str, str]:
    """'s3://bucket/key/prefix' -> ('bucket', 'key/prefix'); a ValidationException for anything else."""
    if not isinstance(s3_uri, str) or not s3_uri.startswith("s3://"):
        raise validation("S3Uri", f"Member must be an s3:// URI (got {str(s3_uri)[:100]!r})")
    bucket, _, key = s3_uri[5:].partition("/")
    if not BUCKET_PATTERN.fullmatch(bucket):
        raise validation("S3Uri", f"{bucket[:80]!r} is not a valid S3 bucket name")
    return bucket, key


def uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def safe_relative(key: str, prefix: str) -> PurePosixPath:
    """The path of `key` under a download folder for prefix `prefix`, refusing '..' and '.' parts."""
    rest = key[len(prefix):].lstrip("/")
    parts = [p for p in rest.split("/") if p]
    if not parts or any(p in (".", "..") or "\x00" in p for p in parts):
        raise ValueError(f"S3 key {key!r}: refused (a '.', '..' or empty path part would leave the folder)")
    return PurePosixPath(*parts)


class S3:
    parse = staticmethod(parse)  # api.s3.parse("s3://b/k") -> ("b", "k")

    def __init__(self, root: Path, account: str = ACCOUNT, region: str = REGION):
        self.account, self.region = account, region
        self.mirror = Mirror(Path(root) / "s3", lambda: self.backend)

    @property
    def backend(self):
        from moto.s3.models import s3_backends

        return s3_backends[self.account]["aws"]

    def restore(self) -> int:
        return self.mirror.restore(self.region)

    def create_bucket(self, bucket: str) -> None:
        if bucket not in self.backend.buckets:
            self.backend.create_bucket(bucket, self.region)
        self.mirror.sync_bucket(bucket)

    def exists(self, bucket: str, key: str) -> bool:
        moto_bucket = self.backend.buckets.get(bucket)
        return moto_bucket is not None and hasattr(moto_bucket.keys.get(key), "etag")

    def get(self, bucket: str, key: str) -> bytes:
        """An object's bytes; FileNotFoundError when the bucket or key is missing."""
        if not self.exists(bucket, key):
            raise FileNotFoundError(f"{uri(bucket, key)}: no such object")
        return self.backend.buckets[bucket].keys[key].value

    def put(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
        if not key:
            raise ValueError("an S3 object needs a key")
        if bucket not in self.backend.buckets:
            self.create_bucket(bucket)
        fake = self.backend.put_object(bucket, key, bytes(data), disable_notification=True)
        if content_type:
            fake.set_metadata({"Content-Type": content_type})
        self.mirror.sync_key(bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        if self.exists(bucket, key):
            self.backend.delete_object(bucket, key)
        self.mirror.sync_key(bucket, key)

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under prefix, sorted; [] for a missing bucket."""
        moto_bucket = self.backend.buckets.get(bucket)
        if moto_bucket is None:
            return []
        return sorted(k for k, v in moto_bucket.keys.items() if k.startswith(prefix) and hasattr(v, "etag"))

    def download(self, s3_uri: str, dest_dir: Path) -> Path:
        """An object (-> dest_dir/<its base name>, returned) or every object under a prefix (-> dest_dir,
        returned, keys' paths relative to the prefix kept, 'folder' keys ending in '/' skipped), as the SDK's
        local mode and SageMaker's File mode lay them out. FileNotFoundError when nothing is there."""
        bucket, key = parse(s3_uri)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        if key and not key.endswith("/") and self.exists(bucket, key):
            target = dest_dir / safe_relative(key.rpartition("/")[2], "")
            target.write_bytes(self.get(bucket, key))
            return target
        keys = [k for k in self.list(bucket, key) if not k.endswith("/")]
        if not keys:
            raise FileNotFoundError(f"No S3 objects found under S3 URL {s3_uri!r}")
        plan = [(k, dest_dir / safe_relative(k, key)) for k in keys]  # every key checked before any is written
        root = dest_dir.resolve()
        for k, target in plan:
            if root not in target.resolve().parents:
                raise ValueError(f"S3 key {k!r}: refused (outside the folder)")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get(bucket, k))
        return dest_dir

    def upload_file(self, path, s3_uri: str, content_type: str | None = None) -> str:
        """A local file to an object URI (a URI ending in '/' gets the file's name); returns the object URI."""
        bucket, key = parse(s3_uri)
        path = Path(path)
        if not key or key.endswith("/"):
            key += path.name
        self.put(bucket, key, path.read_bytes(), content_type)
        return uri(bucket, key)

    def upload_dir(self, folder, s3_prefix: str) -> list[str]:
        """Every file under folder to prefix/<relative path>; returns the object URIs."""
        bucket, prefix = parse(s3_prefix)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        folder = Path(folder)
        return [self.upload_file(p, uri(bucket, prefix + p.relative_to(folder).as_posix()))
                for p in sorted(folder.rglob("*")) if p.is_file()]
