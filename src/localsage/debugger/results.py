"""Where a job's results are, for `localsage debug` and `localsage report`.

Accepted: a localsage job folder or an output folder (as they are); the `local_container_root` that
SDK v3's ModelTrainer leaves in LOCAL_CONTAINER mode (`compressed_artifacts/model.tar.gz` and
`output.tar.gz`, `artifacts/model` and `artifacts/output`); an `output.tar.gz` (from that folder,
from S3, or from a localsage job), or a folder holding one and no output.

An archive is unpacked into a job-like folder (`<folder>/output/...`), by default beside it:
`output.tar.gz` -> `output-unpacked/`. The archive may hold only plain files and folders, every name
inside the extraction folder: an absolute name, a `..`, a link or a device is refused before anything
is written. A second run on the same, unchanged archive reuses the folder (its rules verdicts and
report stay); a changed archive is unpacked afresh; a folder that localsage did not unpack is never
written over. In v3's folder the archive is preferred to `artifacts/output` (the same files): the
archive is what the SDK hands back, and what a job in the cloud leaves in S3.
"""
from __future__ import annotations

import gzip
import json
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from localsage.core import files

OUTPUT = "output"
OUTPUT_TARBALL = "output.tar.gz"
V3_TARBALL = ("compressed_artifacts", OUTPUT_TARBALL)  # under SDK v3's local_container_root
V3_OUTPUT = ("artifacts", OUTPUT)
UNPACKED_SUFFIX = "-unpacked"
MARKER = ".localsage-unpacked.json"  # what was unpacked here: source, size, mtime


def job_folder(path, into=None) -> Path:
    """The folder to run the rules and the report on (an archive is unpacked first, into `into` or
    beside it)."""
    path = Path(path)
    if path.is_file():
        return unpack(path, into)
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    v3_tarball, v3_output = path.joinpath(*V3_TARBALL), path.joinpath(*V3_OUTPUT)
    if v3_tarball.is_file():
        return unpack(v3_tarball, into)
    if v3_output.is_dir():
        return v3_output.parent
    if (path / OUTPUT_TARBALL).is_file() and not (path / OUTPUT).is_dir():
        return unpack(path / OUTPUT_TARBALL, into)
    return path


def _stem(tarball: Path) -> str:
    name = tarball.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _stamp(tarball: Path) -> dict:
    st = tarball.stat()
    return {"source": str(tarball.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _unpacked_by_us(folder: Path):
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def unpack(tarball, into=None) -> Path:
    """Unpack an output archive into a job-like folder (`<into>/output/...`) and return the folder."""
    tarball = Path(tarball)
    try:
        readable = tarfile.is_tarfile(tarball)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{tarball} is not a readable tar archive: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {tarball}: {exc}") from None
    if not readable:
        raise ValueError(f"{tarball} is not a tar archive (give a job folder, SDK v3's local_container_root "
                         "or an output.tar.gz)")
    job = Path(into) if into else tarball.parent / (_stem(tarball) + UNPACKED_SUFFIX)
    stamp = _stamp(tarball)
    if job.exists():
        previous = _unpacked_by_us(job)
        if previous == stamp:
            return job
        if previous is None and (not job.is_dir() or any(job.iterdir())):
            raise FileExistsError(f"{job} exists and was not unpacked by localsage: choose another folder "
                                  "with --into")
    try:
        job.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{job.name}.", dir=job.parent))
    except OSError as exc:
        raise ValueError(f"cannot unpack {tarball} into {job} ({exc}): choose a writable folder with --into") from None
    try:
        _extract(tarball, staging / "content")
        content = staging / "content"
        entries = list(content.iterdir())
        top = content / OUTPUT if [e.name for e in entries] == [OUTPUT] and entries[0].is_dir() else content
        top.rename(staging / OUTPUT)
        shutil.rmtree(content, ignore_errors=True)
        files.atomic_write_json(staging / MARKER, stamp, indent=2)
        if job.exists():
            shutil.rmtree(job)
        staging.rename(job)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job


def check_member(member: tarfile.TarInfo, tarball) -> None:
    """Refuse what could write outside the extraction folder or is no plain file or folder."""
    name = member.name
    if member.issym() or member.islnk():
        raise ValueError(f"{tarball}: {name!r} is a link (to {member.linkname!r}); an output archive holds "
                         "plain files and folders only")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{tarball}: {name!r} is not a plain file or folder")
    if name.startswith("/") or "\\" in name or ".." in PurePosixPath(name).parts:
        raise ValueError(f"{tarball}: {name!r} would land outside the extraction folder")


def _extract(tarball: Path, dest: Path) -> None:
    try:
        with tarfile.open(tarball) as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member, tarball)
            dest.mkdir(parents=True)
            # the stdlib's own checks too where it has them (3.11.4+): no owners, no special modes
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
    except getattr(tarfile, "FilterError", ()) as exc:
        raise ValueError(f"{tarball}: refused by tarfile's data filter: {exc}") from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{tarball} is not a readable tar archive: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot unpack {tarball} into {dest}: {exc}") from None
