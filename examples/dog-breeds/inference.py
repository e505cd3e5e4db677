"""SageMaker inference script for a dog-breed classifier (ResNet state_dict in model.pth).

What a SageMaker PyTorch user deploys with `PyTorchModel(entry_point="inference.py", ...)`; localsage serves
it unchanged (`localsage serve`, the image's `serve`, SDK local mode). The model dir:

    model.pth                     state_dict of torchvision resnet18/34/50 (arch read from the weights)
    model_info.json               optional {"arch", "classes": [...]}, what train.py writes
    index_to_name.json            optional {"0": "Affenpinscher", ...}   (or code/classes.json: a list)
    code/inference.py             this file

Requests: image/jpeg, image/png, image/webp, application/x-image (raw bytes); application/json
{"image": "<base64>", "topk": 3}; application/x-npy: an image as a uint8 HxWx3 array, or an already
normalised float32 3xHxW / Nx3xHxW batch (what PyTorchPredictor's NumpySerializer sends).
Answers: application/json {"predictions": [{"label", "index", "probability"}, ...]} (top-k, default 5)
or application/x-npy (the probabilities, N x classes) by Accept.
predict_fn also takes a list of inputs, so a copy with `BATCH_PREDICT = True` runs one forward per batch.
"""
import base64
import io
import json
import os

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2 as T

RESIZE, CROP = 256, 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TOPK = 5
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image")
ARCHS = {(512, 8): "resnet18", (512, 16): "resnet34", (2048, 16): "resnet50"}  # (fc inputs, blocks) -> arch

_preprocess = T.Compose([T.Resize(RESIZE, antialias=True), T.CenterCrop(CROP), T.ToDtype(torch.float32, scale=True),
                         T.Normalize(MEAN, STD)])


class UnsupportedContentTypeError(ValueError):
    """Raised by input_fn for a content type this script does not read (the server answers 415)."""


class UnsupportedAcceptError(ValueError):
    """Raised by output_fn for an Accept this script cannot produce (the server answers 406)."""


def _arch(state):
    blocks = len({tuple(k.split(".")[:2]) for k in state if k.startswith("layer")})
    return ARCHS.get((state["fc.weight"].shape[1], blocks), "resnet18")


def _classes(model_dir, num_classes):
    info = os.path.join(model_dir, "model_info.json")
    if os.path.isfile(info):
        with open(info) as f:
            classes = json.load(f).get("classes")
        if classes and len(classes) == num_classes:
            return list(classes)
    index = os.path.join(model_dir, "index_to_name.json")
    listed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classes.json")
    if os.path.isfile(index):
        with open(index) as f:
            mapping = json.load(f)
        return [mapping.get(str(i), str(i)) for i in range(num_classes)]
    if os.path.isfile(listed):
        with open(listed) as f:
            return list(json.load(f))
    return [f"class_{i}" for i in range(num_classes)]


def model_fn(model_dir):
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    num_classes = state["fc.weight"].shape[0]
    model = torchvision.models.get_model(_arch(state), num_classes=num_classes, weights=None)
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    model.classes = _classes(model_dir, num_classes)
    return model


def _image(raw):
    img = Image.open(io.BytesIO(raw))
    img.draft("RGB", (RESIZE, RESIZE))  # JPEG: decode at a reduced scale when the image is large
    chw = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return _preprocess(chw).unsqueeze(0)


def input_fn(body, content_type):
    """-> {"x": N x 3 x 224 x 224 float tensor, "topk": k}"""
    if content_type in IMAGE_TYPES:
        return {"x": _image(body), "topk": TOPK}
    if content_type == "application/json":
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("image"), str):
            raise ValueError('JSON body must be {"image": "<base64>", "topk": k}')
        topk = doc.get("topk", TOPK)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError("topk must be a positive integer")
        return {"x": _image(base64.b64decode(doc["image"])), "topk": topk}
    if content_type == "application/x-npy":
        array = np.load(io.BytesIO(body), allow_pickle=False)
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:  # an HxWx3 image
            return {"x": _preprocess(torch.from_numpy(array.copy()).permute(2, 0, 1)).unsqueeze(0), "topk": TOPK}
        x = torch.from_numpy(array.astype(np.float32))
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a 3xHxW or Nx3xHxW array, got shape {tuple(array.shape)}")
        return {"x": x, "topk": TOPK}
    raise UnsupportedContentTypeError(f"content type {content_type!r} is not supported: send an image, "
                                      "application/json or application/x-npy")


def predict_fn(data, model):
    """One input (a dict of input_fn) -> probabilities; a list of inputs (BATCH_PREDICT) -> a list, one forward."""
    batch = isinstance(data, list)
    items = data if batch else [data]
    device = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.cat([d["x"] for d in items]).to(device)
        probs = torch.softmax(model(x).float(), dim=1).cpu()
    out, pos = [], 0
    for d in items:
        n = d["x"].shape[0]
        out.append({"probs": probs[pos:pos + n], "topk": min(d["topk"], probs.shape[1]), "classes": model.classes})
        pos += n
    return out if batch else out[0]


def output_fn(prediction, accept):
    probs = prediction["probs"]
    if "application/x-npy" in accept:
        buf = io.BytesIO()
        np.save(buf, probs.numpy())
        return buf.getvalue(), "application/x-npy"
    if "application/json" in accept or "*/*" in accept:
        answers = []
        for row in probs:
            values, indices = row.topk(prediction["topk"])
            answers.append([{"label": prediction["classes"][i], "index": i, "probability": round(float(p), 6)}
                            for p, i in zip(values.tolist(), indices.tolist())])
        return json.dumps({"predictions": answers[0] if len(answers) == 1 else answers}), "application/json"
    raise UnsupportedAcceptError(f"accept {accept!r} is not supported: ask for application/json or application/x-npy")
