"""Every SageMaker request checked against the service's own model (botocore's sagemaker service JSON) before
an operation sees it: types, required members, lengths, ranges and name patterns, as the service checks them.
So an operation can trust the shape of what it reads, and a wrong type is a 400 naming the field, never a
crash. Enums are not checked: a newer SDK may send a value this botocore does not list yet. Unknown members
are ignored (a newer SDK's fields)."""
from __future__ import annotations

import functools
import re

from localsage.api.errors import ApiError

MAX_ERRORS = 5  # reported in one message, as AWS lists a few


@functools.lru_cache(maxsize=1)
def service_model():
    import botocore.session  # about 0.2 s, once

    return botocore.session.get_session().get_service_model("sagemaker")


@functools.lru_cache(maxsize=1024)
def _pattern(text: str):
    try:
        return re.compile(text)
    except re.error:  # Java-only syntax (\p{L}): the service checks it, we cannot
        return None


def operation_names() -> frozenset:
    return frozenset(service_model().operation_names)


def check_request(operation: str, body: dict) -> None:
    """Raise ApiError(ValidationException) listing what in `body` breaks `operation`'s input shape."""
    if operation not in operation_names():
        return
    shape = service_model().operation_model(operation).input_shape
    if shape is None:
        return
    errors: list[str] = []
    _walk(shape, body, "", errors)
    if errors:
        count = len(errors)
        raise ApiError("ValidationException", f"{count} validation error{'s' * (count > 1)} detected: "
                                              + "; ".join(errors[:MAX_ERRORS]))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _walk(shape, value, path: str, errors: list) -> None:
    if len(errors) >= MAX_ERRORS:
        return
    kind, meta = shape.type_name, shape.metadata
    where = path or "request"
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"Value at '{where}' failed to satisfy constraint: Member must be a structure")
            return
        for name in shape.required_members:
            if value.get(name) is None:
                errors.append(f"Value null at '{_join(path, name)}' failed to satisfy constraint: "
                              "Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                _walk(member, value[name], _join(path, name), errors)
        return
    if kind == "list":
        if not isinstance(value, list):
            errors.append(f"Value at '{where}' failed to satisfy constraint: Member must be a list")
            return
        _length(len(value), meta, value, where, errors)
        for i, item in enumerate(value[:1000]):  # a list longer than its max is already reported
            _walk(shape.member, item, f"{where}.{i + 1}", errors)
        return
    if kind == "map":
        if not isinstance(value, dict):
            errors.append(f"Value at '{where}' failed to satisfy constraint: Member must be a map")
            return
        _length(len(value), meta, value, where, errors)
        for key, item in list(value.items())[:1000]:
            _walk(shape.key, key, f"{where}.key", errors)
            _walk(shape.value, item, f"{where}.{key}"[:200], errors)
        return
    _scalar(kind, meta, value, where, errors)


def _scalar(kind: str, meta: dict, value, where: str, errors: list) -> None:
    if kind == "string":
        if not isinstance(value, str):
            errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must be a string")
            return
        before = len(errors)
        _length(len(value), meta, value, where, errors)
        pattern = meta.get("pattern") and _pattern(meta["pattern"])
        # a string already too long is not also matched: no regular expression runs over a megabyte
        if pattern and len(errors) == before and before < MAX_ERRORS and not pattern.fullmatch(value):
            errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must satisfy "
                          f"regular expression pattern: {meta['pattern']}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must be an "
                          "integer")
        else:
            _range(value, meta, where, errors)
    elif kind in ("float", "double"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must be a number")
        else:
            _range(value, meta, where, errors)
    elif kind == "boolean" and not isinstance(value, bool):
        errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must be a boolean")
    elif kind == "timestamp" and (not isinstance(value, (int, float, str)) or isinstance(value, bool)):
        errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must be a timestamp")
    elif kind == "blob" and not isinstance(value, str):
        errors.append(f"Value at '{where}' failed to satisfy constraint: Member must be base64 text")


def _length(n: int, meta: dict, value, where: str, errors: list) -> None:
    if "min" in meta and n < meta["min"]:
        errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must have length "
                      f"greater than or equal to {meta['min']}")
    elif "max" in meta and n > meta["max"]:
        errors.append(f"Value {_show(value)} at '{where}' failed to satisfy constraint: Member must have length "
                      f"less than or equal to {meta['max']}")


def _range(value, meta: dict, where: str, errors: list) -> None:
    if "min" in meta and value < meta["min"]:
        errors.append(f"Value {value} at '{where}' failed to satisfy constraint: Member must have value greater "
                      f"than or equal to {meta['min']}")
    elif "max" in meta and value > meta["max"]:
        errors.append(f"Value {value} at '{where}' failed to satisfy constraint: Member must have value less "
                      f"than or equal to {meta['max']}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
