"""A training job's S3 inputs and outputs, moved by the server (the containers never call the API).

Before the job: each channel (S3Prefix, FullyReplicated) downloaded into the job's staging folder, the
`sagemaker_submit_directory` tarball extracted (plain files and folders only: a link, a device, an absolute
name or a '..' refuses the whole archive), and the CheckpointConfig's checkpoints. After (and, for
checkpoints, while it runs): model.tar.gz and output.tar.gz to `<S3OutputPath>/<job>/output/`, checkpoints,
debugger tensors and rule verdicts to where the request says."""
from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from localsage.api.errors import ApiError, validation
from localsage.api.s3 import parse

SUPPORTED_MODES = ("File", "FastFile")  # FastFile shows the same files at the same paths


class StagingError(Exception):
    """An input the job cannot get (SageMaker's ClientError): the job fails with this reason."""


def channels_of(request: dict) -> list[dict]:
    """The request's channels as [{"name", "uri", "distribution"}], checked as far as localsage runs them;
    a ValidationException for what it does not (Pipe mode, manifests, file systems, duplicate names)."""
    default_mode = (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File")
    out, seen = [], set()
    for i, channel in enumerate(request.get("InputDataConfig") or []):
        where = f"inputDataConfig.{i + 1}"
        name = channel["ChannelName"]
        if name in seen:
            raise validation(f"{where}.channelName", f"channel name {name!r} is given twice")
        seen.add(name)
        mode = channel.get("InputMode") or default_mode
        if mode not in SUPPORTED_MODES:
            raise validation(f"{where}.inputMode", f"{mode!r}: localsage runs File (and FastFile as File) input")
        source = channel.get("DataSource") or {}
        s3 = source.get("S3DataSource")
        if not s3:
            raise validation(f"{where}.dataSource", "localsage reads S3DataSource channels only (no "
                                                    "FileSystemDataSource or dataset definitions)")
        kind = s3.get("S3DataType", "S3Prefix")
        if kind != "S3Prefix":
            raise validation(f"{where}.dataSource.s3DataSource.s3DataType",
                             f"{kind!r}: localsage reads S3Prefix channels (no manifest files)")
        if (channel.get("CompressionType") or "None") != "None":
            raise validation(f"{where}.compressionType", "localsage reads uncompressed channels (CompressionType None)")
        out.append({"name": name, "uri": s3["S3Uri"],
                    "distribution": s3.get("S3DataDistributionType", "FullyReplicated")})
    return out


def stage_channels(s3, channels: list[dict], staging: Path) -> dict:
    """Download each channel into staging/data/<name>; {name: folder}."""
    folders = {}
    for channel in channels:
        dest = Path(staging) / "data" / channel["name"]
        dest.mkdir(parents=True, exist_ok=True)
        try:
            s3.download(channel["uri"], dest)
        except FileNotFoundError:
            raise StagingError(f"ClientError: Data download failed: no S3 objects found under {channel['uri']} "
                               f"(channel {channel['name']})") from None
        except ValueError as exc:
            raise StagingError(f"ClientError: Data download failed for channel {channel['name']}: {exc}") from None
        folders[channel["name"]] = dest
    return folders


def stage_code(s3, uri: str, dest: Path) -> Path:
    """The `sagemaker_submit_directory` tarball (an s3:// object) extracted into dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        bucket, key = parse(uri)
        data = s3.get(bucket, key)
    except (FileNotFoundError, ValueError, ApiError) as exc:
        raise StagingError(f"ClientError: cannot get the source code {uri}: {exc}") from None
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            safe_extract(Path(tmp.name), dest)
        except (tarfile.TarError, OSError, ValueError) as exc:
            raise StagingError(f"ClientError: cannot extract the source code {uri}: {exc}") from None
    return dest


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive of plain files and folders into dest; anything else refuses it, before a byte
    is written (a link, a device, a FIFO, an absolute name, a '..' part)."""
    dest = Path(dest).resolve()
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            parts = PurePosixPath(name).parts
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"{name!r} is not a plain file or folder (links and devices are refused)")
            if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name:
                raise ValueError(f"{name!r} would be written outside the code folder")
            target = (dest / name).resolve()
            if target != dest and dest not in target.parents:
                raise ValueError(f"{name!r} would be written outside the code folder")
        tar.extractall(dest, members=members, filter="data")


def download_prefix(s3, uri: str, dest: Path) -> int:
    """Every object under an S3 prefix into dest (checkpoints of an earlier run); 0 when there are none."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        s3.download(uri.rstrip("/") + "/", dest)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise StagingError(f"ClientError: cannot download the checkpoints {uri}: {exc}") from None
    return sum(1 for p in dest.rglob("*") if p.is_file())


class FolderSync:
    """Uploads a folder's new and changed files to an S3 prefix (checkpoints while a job runs, then once more)."""

    def __init__(self, s3, folder: Path, uri: str):
        self.s3, self.folder, self.uri = s3, Path(folder), uri.rstrip("/")
        self.sent: dict[str, tuple] = {}

    def seed(self) -> None:
        """What is there now came from the prefix: not sent back."""
        self.sent = self._state()

    def _state(self) -> dict:
        state = {}
        if self.folder.is_dir():
            for path in self.folder.rglob("*"):
                if path.is_file() and not path.is_symlink() and not path.name.endswith((".tmp", ".partial")):
                    st = path.stat()
                    state[path.relative_to(self.folder).as_posix()] = (st.st_size, st.st_mtime_ns)
        return state

    def sync(self) -> int:
        count = 0
        for rel, stamp in sorted(self._state().items()):
            if self.sent.get(rel) == stamp:
                continue
            try:
                self.s3.upload_file(self.folder / rel, f"{self.uri}/{rel}")
            except FileNotFoundError:  # replaced or removed meanwhile: the next sync sees it
                continue
            self.sent[rel] = stamp
            count += 1
        return count


def upload_tree(s3, folder: Path, uri: str, leave_out=()) -> list[str]:
    """Every file under folder to uri/<relative path> (top-level entries in leave_out skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or rel.parts[0] in leave_out:
            continue
        out.append(s3.upload_file(path, f"{uri.rstrip('/')}/{rel.as_posix()}"))
    return out
