"""Default model_fn / input_fn / predict_fn / output_fn for script-mode models (serve/script_handler.py).

Standalone like the handlers (torch, numpy, Pillow; never localsage). What a user's inference.py does
not define falls back to these, as in the SageMaker PyTorch inference toolkit:
  * model_fn: TorchScript `model.pt`, else the single `*.pt`/`*.pth` file of the model dir (a state_dict
    needs the user's own model_fn)
  * input_fn: application/json, text/csv, application/x-npy, application/x-npz -> tensor; beyond the
    toolkit, image/jpeg, image/png, image/webp -> float32 CHW tensor in [0, 1] (what ToTensor() gives),
    checked against the pixel limit from the header before decoding
  * predict_fn: model(data) on the model's device, eval mode, no grad
  * output_fn: application/json, text/csv, application/x-npy by Accept
An unsupported content type is a 415 (UnsupportedContentType), an unsupported Accept a 406.
"""

import glob
import io
import json
import os

import numpy as np
import torch

from handler_defaults import HANDLER as _LIMITS  # beside this file, staged with it
from handler_errors import RequestError  # one error type for both handlers ({code, type, message})

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
UTF8_TYPES = (JSON, CSV)  # these bodies reach input_fn decoded to str, others as bytes
ANY = "*/*"

# The image limit: width*height from the header, checked before decoding. The value is the built-in
# handler's (serve/handler_defaults.py, staged beside this file); LOCALSAGE_SERVE_MAX_PIXELS overrides both.
MAX_PIXELS = _LIMITS["max_pixels"]


def unsupported_content_type(content_type, supported):
    return RequestError(415, "UnsupportedContentType",
                        f"content type {content_type!r} is not supported; send one of {', '.join(supported)}")


def max_pixels(env=None):
    env = os.environ if env is None else env
    value = env.get("LOCALSAGE_SERVE_MAX_PIXELS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else MAX_PIXELS


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------ model


def default_model_fn(model_dir):
    path = os.path.join(model_dir, "model.pt")
    if not os.path.isfile(path):
        found = sorted(set(glob.glob(os.path.join(model_dir, "*.pt")) + glob.glob(os.path.join(model_dir, "*.pth"))))
        if len(found) != 1:
            raise FileNotFoundError(
                f"the default model_fn needs model.pt or exactly one *.pt/*.pth file in {model_dir}, found "
                f"{[os.path.basename(f) for f in found] or 'none'}; define model_fn(model_dir) in your inference.py")
        path = found[0]
    try:
        model = torch.jit.load(path, map_location=device())
    except RuntimeError as e:
        raise RuntimeError(
            f"the default model_fn loads TorchScript only and {os.path.basename(path)} is not a TorchScript "
            f"model ({e.__class__.__name__}); a state_dict needs model_fn(model_dir) in your inference.py") from None
    return model.eval()


# ------------------------------------------------------------------------------------------ input


def decode_image(raw, limit=None):
    """Image bytes -> float32 CHW tensor in [0, 1] (RGB, EXIF orientation applied), as ToTensor() gives."""
    from PIL import Image, ImageOps

    limit = limit or max_pixels()
    try:
        img = Image.open(io.BytesIO(raw), formats=("JPEG", "PNG", "WEBP"))
    except Exception as e:  # noqa: BLE001 - any parser failure is the client's bad bytes
        raise RequestError(400, "InvalidImage", f"body is not a JPEG, PNG or WebP image: {e}")
    width, height = img.size
    if width * height > limit:
        raise RequestError(413, "ImageTooLarge", f"image is {width}x{height} = {width * height} pixels, limit {limit}")
    try:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
            pass
        img = img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data
        raise RequestError(400, "InvalidImage", f"image is truncated or corrupt: {e}")
    chw = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return chw.float().div_(255)


def _npz(raw):
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        names = archive.files
        if len(names) != 1:
            raise RequestError(400, "InvalidInput", f"the default input_fn takes an .npz with one array, got {names}")
        return archive[names[0]]


def decode(body, content_type):
    """The default input_fn's decoding: body (str for JSON/CSV, bytes otherwise) -> numpy array or tensor."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in IMAGE_TYPES:
        return decode_image(body if isinstance(body, (bytes, bytearray)) else body.encode())
    if ctype not in (JSON, CSV, NPY, NPZ):
        raise unsupported_content_type(content_type, (JSON, CSV, NPY, NPZ) + IMAGE_TYPES)
    if isinstance(body, (bytes, bytearray)) and ctype in UTF8_TYPES:
        body = bytes(body).decode("utf-8")
    if not body or (isinstance(body, str) and not body.strip()):
        raise RequestError(400, "EmptyBody", "request body is empty")
    try:
        if ctype == JSON:
            return np.array(json.loads(body), dtype=np.float32)
        if ctype == CSV:
            return np.genfromtxt(io.StringIO(body), delimiter=",", dtype=np.float32, ndmin=1)
        if ctype == NPY:
            return np.load(io.BytesIO(body), allow_pickle=False)
        return _npz(body)
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed payload
        raise RequestError(400, "InvalidInput", f"cannot decode the {ctype} body: {e}")


def default_input_fn(body, content_type):
    array = decode(body, content_type)
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device())


# ---------------------------------------------------------------------------------------- predict


def _model_device(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return device()


def default_predict_fn(data, model):
    if hasattr(model, "eval"):
        model.eval()
    with torch.no_grad():
        if isinstance(data, torch.Tensor):
            data = data.to(_model_device(model))
        return model(data)


# ----------------------------------------------------------------------------------------- output


def _to_numpy(prediction):
    if isinstance(prediction, torch.Tensor):
        return prediction.detach().cpu().numpy()
    if isinstance(prediction, (list, tuple)) and prediction and isinstance(prediction[0], torch.Tensor):
        return np.stack([_to_numpy(p) for p in prediction])
    return np.asarray(prediction)


def choose_accept(accept, supported=(JSON, CSV, NPY)):
    """The first supported type of an Accept header (ignoring q-values), or None."""
    for part in (accept or "").split(","):
        ctype = part.split(";")[0].strip().lower()
        if ctype in supported:
            return ctype
    return None


def encode(prediction, accept):
    ctype = choose_accept(accept)
    if ctype is None:
        raise RequestError(406, "UnsupportedAccept",
                           f"accept {accept!r} is not supported by the default output_fn; "
                           f"ask for {JSON}, {CSV} or {NPY}")
    array = _to_numpy(prediction)
    if ctype == JSON:
        return json.dumps(array.tolist()), ctype
    if ctype == CSV:
        buf = io.StringIO()
        rows = np.atleast_1d(array)
        np.savetxt(buf, rows if rows.ndim <= 2 else rows.reshape(rows.shape[0], -1), delimiter=",", fmt="%.8g")
        return buf.getvalue(), ctype
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue(), ctype


def default_output_fn(prediction, accept):
    return encode(prediction, accept)
