"""Script mode's code, packed as the sagemaker SDK packs it (facts from sagemaker-python-sdk v2:
`Framework._stage_user_code_in_s3`, `fw_utils.tar_and_upload_dir`, `utils.repack_model`).

- Training: the source dir's entries go at the root of `sourcedir.tar.gz` (symlinks followed; no
  source dir: the entry point file alone), uploaded to s3://<output bucket>/<job>/source/; the job's
  hyperparameters name it: `sagemaker_submit_directory` and `sagemaker_program` (plus the log level,
  job name and region), every value JSON-encoded as the framework estimators do.
- Deploy: the model's `model.tar.gz` is repacked with the code under `code/` (the whole source dir,
  or the entry point file alone) and the model gets SAGEMAKER_PROGRAM / SAGEMAKER_SUBMIT_DIRECTORY.

Plans are made without touching AWS (dry runs print them); `build` writes the archive and `upload`
/ `run` send it.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from localsage.host.cloud.constants import (
    CONTAINER_LOG_LEVEL,
    JOB_NAME_HP,
    LOG_LEVEL_HP,
    MODEL_ARCHIVE,
    MODEL_CODE_DIR,
    PROGRAM_HP,
    REGION_HP,
    SOURCE_ARCHIVE,
    SUBMIT_DIR_HP,
)
from localsage.host.cloud.s3 import s3_join, split_s3, upload_file
from localsage.host.cloud.session import CloudError

SHOWN_FILES = 100  # a dry run lists at most this many files of a source dir


def _files(root: Path) -> list:
    """Every file under root (symlinks followed, as the SDK's tar does), relative, sorted."""
    found = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        found.extend((Path(dirpath) / n).relative_to(root).as_posix() for n in names)
    return sorted(found)


def _locate(entry_point: str, source_dir) -> tuple:
    """(program relative to the code root, source dir or None); CloudError when the file is not there."""
    if source_dir is None:
        path = Path(entry_point)
        if not path.is_file():
            raise CloudError(f"entry point {entry_point!r} not found (or not a file)")
        return path.name, None
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise CloudError(f"source dir {str(source_dir)!r} not found (or not a folder)")
    path = Path(entry_point)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(source_dir.resolve())
        except ValueError:
            raise CloudError(f"entry point {entry_point!r} is not inside the source dir {str(source_dir)!r}") from None
    if not (source_dir / path).is_file():
        raise CloudError(f"no file named {path.as_posix()!r} in the source dir {str(source_dir)!r}")
    return path.as_posix(), source_dir


def encode_hyperparameters(values: dict) -> dict:
    """Every value JSON-encoded, as the SDK's framework estimators send them (`"64"`, `"\\"resnet50\\""`).
    Command-line strings are read as JSON first where they are JSON (`64` -> 64, `true` -> true)."""
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[str(key)] = json.dumps(value)
    return out


# ---------------------------------------------------------------------------------------------
# training: sourcedir.tar.gz


def source_prefix(output_path: str, job_name: str) -> str:
    """s3://<bucket of output_path>/<job>/source: where the SDK puts a job's code (its output prefix
    is not used, as the SDK does when output_path is given)."""
    bucket, _ = split_s3(output_path)
    return f"s3://{bucket}/{job_name}/source"


@dataclass
class SourcePackage:
    """sourcedir.tar.gz of a script-mode job: what goes in it and where it goes."""
    program: str               # the entry point, relative to the archive root
    source_dir: Path | None    # packed whole; None: the entry point file alone
    entry_file: Path           # the entry point on this machine
    s3_uri: str                # s3://bucket/<job>/source/sourcedir.tar.gz

    @property
    def files(self) -> list:
        return _files(self.source_dir) if self.source_dir else [self.program]

    def to_dict(self) -> dict:
        files = self.files
        return {"operation": "UploadSourceDir (not sent in a dry run)", "S3Uri": self.s3_uri,
                "SourceDir": str(self.source_dir or self.entry_file), "Program": self.program,
                "FileCount": len(files), "Files": files[:SHOWN_FILES]}

    def build(self, dest) -> Path:
        """Write the archive to dest (entries at its root, symlinks followed)."""
        dest = Path(dest)
        with tarfile.open(dest, "w:gz", dereference=True) as tar:
            if self.source_dir is None:
                tar.add(self.entry_file, arcname=self.program)
            else:
                for name in sorted(os.listdir(self.source_dir)):
                    tar.add(self.source_dir / name, arcname=name)
        return dest

    def upload(self, s3_client) -> str:
        with tempfile.TemporaryDirectory(prefix="localsage-source-") as tmp:
            return upload_file(s3_client, self.build(Path(tmp) / SOURCE_ARCHIVE), self.s3_uri)


def source_package(source_dir, entry_point: str, s3_prefix: str, job_name: str | None = None,
                   region: str | None = None) -> tuple:
    """(hyperparameters, SourcePackage) for a script-mode job. The hyperparameters are the SDK's
    script-mode ones, JSON-encoded; merge the user's (encode_hyperparameters) under them. Nothing
    is read beyond the file list and nothing is sent: call package.upload(s3_client) to send it."""
    program, source = _locate(entry_point, source_dir)
    split_s3(s3_prefix)
    uri = s3_join(s3_prefix, SOURCE_ARCHIVE)
    entry_file = (source / program) if source else Path(entry_point)
    hps = {SUBMIT_DIR_HP: uri, PROGRAM_HP: program, LOG_LEVEL_HP: CONTAINER_LOG_LEVEL}
    if job_name:
        hps[JOB_NAME_HP] = job_name
    if region:
        hps[REGION_HP] = region
    return ({k: json.dumps(v) for k, v in hps.items()},
            SourcePackage(program=program, source_dir=source, entry_file=entry_file, s3_uri=uri))


# ---------------------------------------------------------------------------------------------
# deploy: model.tar.gz repacked with code/


def repacked_uri(code_location: str, model_name: str) -> str:
    """s3://<code location>/<model name>/model.tar.gz, the SDK's place for a repacked model."""
    split_s3(code_location)
    return s3_join(code_location, model_name, MODEL_ARCHIVE)


@dataclass
class RepackPlan:
    """model.tar.gz plus code/ (an inference script), as PyTorchModel(entry_point=...) repacks it."""
    model_data: str            # s3://.../model.tar.gz or a local model.tar.gz
    destination: str           # s3://.../<model name>/model.tar.gz
    program: str               # SAGEMAKER_PROGRAM
    source_dir: Path | None
    entry_file: Path

    @property
    def code_files(self) -> list:
        files = _files(self.source_dir) if self.source_dir else [self.program]
        return [f"code/{f}" for f in files]

    def environment(self, region: str) -> dict:
        """The script-mode variables the SDK gives the model's container."""
        return {PROGRAM_HP.upper(): self.program, SUBMIT_DIR_HP.upper(): MODEL_CODE_DIR,
                LOG_LEVEL_HP.upper(): str(CONTAINER_LOG_LEVEL), REGION_HP.upper(): region}

    def to_dict(self) -> dict:
        files = self.code_files
        return {"operation": "RepackModel (not sent in a dry run)", "ModelData": self.model_data,
                "RepackedModelData": self.destination, "Program": self.program,
                "Adds": files[:SHOWN_FILES], "FileCount": len(files)}

    def build(self, workdir, s3_client=None) -> Path:
        """The repacked archive, written under workdir (the model is downloaded first when on S3)."""
        workdir = Path(workdir)
        source = Path(self.model_data)
        if self.model_data.startswith("s3://"):
            bucket, key = split_s3(self.model_data)
            source = workdir / "original.tar.gz"
            s3_client.download_file(bucket, key, str(source))
        model_dir = workdir / "model"
        model_dir.mkdir()
        with tarfile.open(source) as tar:
            tar.extractall(model_dir, filter="data")
        code = model_dir / "code"
        if self.source_dir is not None:
            shutil.rmtree(code, ignore_errors=True)
            shutil.copytree(self.source_dir, code)
        else:
            code.mkdir(exist_ok=True)
            shutil.copy2(self.entry_file, code / self.program)
        dest = workdir / MODEL_ARCHIVE
        with tarfile.open(dest, "w:gz") as tar:
            for name in sorted(os.listdir(model_dir)):
                tar.add(model_dir / name, arcname=name)
        return dest

    def run(self, s3_client) -> str:
        """Repack and upload; returns the repacked model's URI."""
        with tempfile.TemporaryDirectory(prefix="localsage-repack-") as tmp:
            return upload_file(s3_client, self.build(tmp, s3_client), self.destination)


def repack_plan(model_data: str, entry_point: str, source_dir, destination: str) -> RepackPlan:
    program, source = _locate(entry_point, source_dir)
    if "/" in program:
        raise CloudError(f"inference entry point {program!r}: it must be at the top of the source dir "
                         "(the inference toolkit imports it from code/)")
    split_s3(destination)
    if not model_data.startswith("s3://") and not Path(model_data).is_file():
        raise CloudError(f"model {model_data!r} not found")
    entry_file = (source / program) if source else Path(entry_point)
    return RepackPlan(model_data=model_data, destination=destination, program=program, source_dir=source,
                      entry_file=entry_file)
