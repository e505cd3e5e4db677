"""SageMaker PyTorch inference handlers for the model train.py saves (a state_dict + model_info.json).

Deployed from model.tar.gz's code/ (the SDK's repack; localsage copies the source dir there).
"""
import io
import json
import os

import torch
import torchvision
from PIL import Image
from torchvision import transforms


def model_fn(model_dir):
    with open(os.path.join(model_dir, "model_info.json")) as f:
        info = json.load(f)
    model = torchvision.models.get_model(info["arch"], weights=None)
    if hasattr(model, "fc"):
        model.fc = torch.nn.Linear(model.fc.in_features, len(info["classes"]))
    else:
        model.classifier[-1] = torch.nn.Linear(model.classifier[-1].in_features, len(info["classes"]))
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu"))
    model.eval()
    model.info = info
    return model


def input_fn(request_body, content_type):
    if content_type in ("image/jpeg", "image/png", "application/x-image"):
        return Image.open(io.BytesIO(request_body)).convert("RGB")
    raise ValueError(f"unsupported content type {content_type}")


def predict_fn(image, model):
    size = model.info["image_size"]
    tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        probs = torch.softmax(model(tf(image).unsqueeze(0)), dim=1)[0]
    top = int(probs.argmax())
    return {"class": model.info["classes"][top], "probability": float(probs[top])}


def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
