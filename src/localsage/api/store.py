"""The API's resource records: one JSON file per resource, `<root>/resources/<kind>/<name>.json`, written
atomically (a kill leaves the old record or the new one). A name becomes a path only after it passed
SageMaker's name rule (letters, digits, hyphens), so no name reaches outside the folder."""
from __future__ import annotations

import json
import threading
from pathlib import Path

from localsage.api.errors import validation
from localsage.core.contract import NAME_PATTERN
from localsage.core.files import atomic_write_json

KINDS = ("TrainingJob", "HyperParameterTuningJob", "Model", "EndpointConfig", "Endpoint", "TransformJob",
         "Tags")  # Tags: those added to a resource after its creation (api/tags.py)


def check_name(name, field: str = "Name") -> str:
    """A SageMaker resource name, or a ValidationException naming the field."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise validation(field, f"Member must satisfy regular expression pattern: {NAME_PATTERN.pattern} "
                                f"(got {str(name)[:80]!r})")
    return name


class Store:
    """put/get/list/delete records of one kind; `update` reads, changes and writes under one lock."""

    def __init__(self, root: Path):
        self.root = Path(root) / "resources"
        self._lock = threading.RLock()

    def _path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}; one of {', '.join(KINDS)}")
        return self.root / kind / f"{check_name(name)}.json"

    def put(self, kind: str, name: str, record: dict) -> None:
        path = self._path(kind, name)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, record)

    def get(self, kind: str, name: str) -> dict | None:
        path = self._path(kind, name)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def list(self, kind: str) -> list[dict]:
        """Every record of a kind, in name order (operations sort and filter as their List* call asks)."""
        folder = self._path(kind, "x").parent
        records = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # removed meanwhile, or not ours: skip it, as a listing does
                continue
        return records

    def delete(self, kind: str, name: str) -> bool:
        path = self._path(kind, name)
        with self._lock:
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False

    def update(self, kind: str, name: str, changes: dict | None = None, **fields) -> dict | None:
        """Merge `changes`/`fields` into the record and write it; None (nothing written) when it is gone."""
        with self._lock:
            record = self.get(kind, name)
            if record is None:
                return None
            record.update(changes or {}, **fields)
            self.put(kind, name, record)
            return record
