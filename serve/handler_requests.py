"""Request parsing of the TorchServe handler: one batch entry -> (image bytes, topk, is_list).

Raw bodies (image/*, application/x-image, application/octet-stream or no content type),
JSON ({"image": b64} / {"images": [...]} / {"url": ...} when enabled) and multipart forms.
Everything wrong with a request raises RequestError (4xx) for that request alone.
"""

import base64
import binascii
import json
import re

from handler_errors import RequestError
from handler_urls import fetch_url

RAW_TYPES = ("application/x-image", "application/octet-stream", "binary/octet-stream", "")
FILE_FIELDS = ("body", "data", "image", "file", "inputs", "input")
MAX_TOPK_DIGITS = 6  # "topk" strings longer than this are refused before int() (Python caps int strings)


def _as_bytes(value):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def parse_topk(value, num_classes, default):
    """An integer 1..num_classes from JSON, a form field, a query parameter or a header."""
    if value is None:
        return min(default, num_classes)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[0-9]{1,%d}" % MAX_TOPK_DIGITS, text):
            shown = text if len(text) <= 20 else f"{text[:20]}... ({len(text)} characters)"
            raise RequestError(400, "InvalidTopK", f"topk={shown!r} is not an integer between 1 and {num_classes}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, "InvalidTopK", f"topk must be an integer between 1 and {num_classes}")
    if not 1 <= value <= num_classes:
        shown = value if value.bit_length() < 64 else "a huge number"
        raise RequestError(400, "InvalidTopK", f"topk={shown} is out of range 1..{num_classes}")
    return value


_B64_JUNK = re.compile(rb"\s+")


def decode_base64(value, limit, what="image"):
    if not isinstance(value, str) or not value:
        raise RequestError(400, "InvalidBase64", f"{what} must be a non-empty base64 string")
    data = value.encode("ascii", "replace")
    if data.startswith(b"data:"):  # data URL: data:image/jpeg;base64,....
        data = data.partition(b",")[2]
    data = _B64_JUNK.sub(b"", data)
    if len(data) * 3 // 4 > limit + 3:
        raise RequestError(413, "ImageTooLarge", f"{what} is over the limit of {limit} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, "InvalidBase64", f"{what} is not valid base64: {e}")


def _content_type(context, idx, name):
    ct = ""
    if context is not None:
        try:
            param = context.get_request_header(idx, name)
            if isinstance(param, dict):
                ct = param.get("content-type") or ""
            if not ct and name == "body":
                ct = (context.get_request_header(idx, "Content-Type")
                      or context.get_request_header(idx, "content-type") or "")
        except (AttributeError, IndexError, KeyError, TypeError):
            ct = ""
    return ct.split(";")[0].strip().lower()


def _header(context, idx, name):
    """A request header, case-insensitively (TorchServe keeps the client's spelling)."""
    if context is None:
        return None
    try:
        props = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    for key, value in props.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _topk_from_headers(context, idx):
    """X-Topk: N, or SageMaker's X-Amzn-SageMaker-Custom-Attributes: topk=N."""
    value = _header(context, idx, "x-topk")
    if value is not None:
        return value
    attrs = _header(context, idx, "x-amzn-sagemaker-custom-attributes") or ""
    for part in re.split(r"[;,]", attrs):
        key, _, val = part.partition("=")
        if key.strip().lower() == "topk":
            return val.strip()
    return None


def parse_request(item, idx, context, settings, num_classes):
    """Return (list of image bytes, topk, is_list) for one request of the batch.
    topk: JSON "topk" > form field or query parameter "topk" (/invocations) > X-Topk header."""
    if not isinstance(item, dict):
        raise RequestError(400, "EmptyBody", "request has no body")
    topk_field = item.get("topk")
    if topk_field is None:
        topk_field = _topk_from_headers(context, idx)
    fields = {k: v for k, v in item.items() if k != "topk" and k != "model_name"}
    if not fields:
        raise RequestError(400, "EmptyBody", "request body is empty")
    name = next((f for f in FILE_FIELDS if f in fields), None)
    if name is None:
        if len(fields) != 1:
            raise RequestError(400, "MissingImage", f"expected one image field, got fields {sorted(fields)}")
        name = next(iter(fields))
    value = fields[name]
    ctype = _content_type(context, idx, name)

    if (ctype in ("", "text/plain") and isinstance(value, (bytes, bytearray, str))
            and _as_bytes(value).lstrip()[:1] == b"{"):
        ctype = "application/json"  # no/odd content type but a JSON object body
    if ctype == "application/json" or isinstance(value, (dict, list)):
        if isinstance(value, (bytes, bytearray, str)):
            raw = _as_bytes(value)
            if not raw.strip():
                raise RequestError(400, "EmptyBody", "request body is empty")
            try:
                value = json.loads(raw)
            except RecursionError:
                raise RequestError(400, "InvalidJSON", "body is not valid JSON: nested too deeply") from None
            except (ValueError, UnicodeDecodeError) as e:  # also integers over Python's digit limit
                raise RequestError(400, "InvalidJSON", f"body is not valid JSON: {str(e)[:200]}") from None
        return _parse_json(value, settings, num_classes, topk_field)

    raw = _as_bytes(value)
    if not raw:
        raise RequestError(400, "EmptyBody", "request body is empty")
    if not (ctype in RAW_TYPES or ctype.startswith("image/") or ctype == "multipart/form-data"):
        raise RequestError(
            415, "UnsupportedContentType",
            f"content type {ctype!r} is not supported; send image/jpeg, image/png, "
            "application/x-image, application/octet-stream, application/json or multipart/form-data",
        )
    if len(raw) > settings["max_image_bytes"]:
        raise RequestError(413, "ImageTooLarge", f"image is {len(raw)} bytes, limit {settings['max_image_bytes']}")
    return [raw], parse_topk(topk_field, num_classes, settings["topk"]), False


def _parse_json(doc, settings, num_classes, topk_field):
    if not isinstance(doc, dict):
        raise RequestError(400, "InvalidJSON", 'JSON body must be an object like {"image": "<base64>"}')
    topk = parse_topk(doc.get("topk", topk_field), num_classes, settings["topk"])
    keys = [k for k in ("image", "images", "url", "urls") if k in doc]
    if len(keys) != 1:
        raise RequestError(400, "MissingImage", 'JSON body needs exactly one of "image", "images", "url", "urls"')
    key = keys[0]
    if key in ("url", "urls") and not settings["allow_urls"]:
        raise RequestError(403, "URLInputDisabled", "URL inputs are disabled on this endpoint")
    many = key.endswith("s")
    values = doc[key] if many else [doc[key]]
    if many and (not isinstance(values, list) or not values):
        raise RequestError(400, "InvalidJSON", f'"{key}" must be a non-empty list')
    if len(values) > settings["max_images"]:
        raise RequestError(413, "TooManyImages", f"{len(values)} images in one request, limit {settings['max_images']}")
    images = []
    for i, value in enumerate(values):
        what = f"{key}[{i}]" if many else key
        if key.startswith("url"):
            if not isinstance(value, str):
                raise RequestError(400, "InvalidURL", f"{what} must be a string")
            images.append(fetch_url(value, settings))
        else:
            images.append(decode_base64(value, settings["max_image_bytes"], what))
        if not images[-1]:
            raise RequestError(400, "EmptyBody", f"{what} is empty")
    return images, topk, many
