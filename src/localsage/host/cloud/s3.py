"""S3: URIs, where artifacts go by default, copying a data folder or one file up."""
from __future__ import annotations

from pathlib import Path

from localsage.host.cloud import session
from localsage.host.cloud.session import CloudError

# Encrypted at rest with the AWS managed key, as the SDK uploads code and repacked models.
ENCRYPTED = {"ServerSideEncryption": "aws:kms"}


def split_s3(uri: str) -> tuple:
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise CloudError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def s3_join(*parts) -> str:
    """Join an s3:// URI (or bucket/key parts) with single slashes."""
    head, *rest = [str(p) for p in parts]
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in rest if p.strip("/"))])


def default_output_path(data) -> str:
    """s3://<bucket of the data>/localsage/jobs: where artifacts go when --output-path is not given."""
    first = next(iter(data.values())) if isinstance(data, dict) else data
    bucket, _ = split_s3(str(first))
    return f"s3://{bucket}/localsage/jobs"


def upload_file(s3_client, path, uri: str, encrypted: bool = True) -> str:
    bucket, key = split_s3(uri)
    s3_client.upload_file(str(path), bucket, key, ExtraArgs=dict(ENCRYPTED) if encrypted else None)
    return uri


def upload_data(local_dir, s3_uri: str, region: str | None = None, boto_session=None, out=print) -> int:
    """Copy a folder (e.g. dogImages with train/ valid/ test/) to s3://bucket/prefix; returns the file count."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {local_dir}")
    bucket, prefix = split_s3(s3_uri)
    boto_session = boto_session or session.aws_session(region)
    s3 = boto_session.client("s3")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    for i, path in enumerate(files, 1):
        key = "/".join(filter(None, [prefix, path.relative_to(local_dir).as_posix()]))
        s3.upload_file(str(path), bucket, key)
        if i % 500 == 0 or i == len(files):
            out(f"uploaded {i}/{len(files)} files to s3://{bucket}/{prefix}")
    return len(files)
