"""torchvision backbone by name + weights, a new head for N classes, freezing."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class WeightsError(ValueError):
    pass


def _head(model: nn.Module):
    """(parent module, attribute name, layer) of the final classification layer."""
    for attr in ("fc", "head", "heads", "classifier"):
        mod = getattr(model, attr, None)
        if mod is None:
            continue
        if isinstance(mod, nn.Linear):
            return model, attr, mod
        if isinstance(mod, nn.Sequential):
            for i in range(len(mod) - 1, -1, -1):
                if isinstance(mod[i], (nn.Linear, nn.Conv2d)):
                    return mod, str(i), mod[i]
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    parent, name, layer = _head(model)
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, num_classes)
    else:  # squeezenet-style conv head
        new = nn.Conv2d(layer.in_channels, num_classes, kernel_size=layer.kernel_size)
    setattr(parent, name, new) if not name.isdigit() else parent.__setitem__(int(name), new)
    return model


def head_parameters(model: nn.Module):
    return list(_head(model)[2].parameters())


def _resolve_weights(arch: str, weights: str):
    from torchvision import models

    if weights.lower() in ("none", ""):
        return None, None
    if weights.endswith((".pth", ".pt")) or os.sep in weights:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return None, path
    try:
        enum = models.get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise WeightsError(f"unknown arch {arch!r}: {exc}") from exc
    try:
        return enum[weights] if weights != "DEFAULT" else enum.DEFAULT, None
    except KeyError:
        names = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise WeightsError(f"unknown weights {weights!r} for {arch}; choose one of: {names}, none") from None


def check_weights_available(arch: str, weights: str) -> None:
    """Fail before training when pretrained weights would need a download that cannot happen."""
    w, path = _resolve_weights(arch, weights)
    if w is None:
        return
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if cache.exists():
        return
    try:
        import socket

        host = w.url.split("/")[2]
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise WeightsError(
            f"pretrained weights {arch}/{w.name} are not cached ({cache}) and {w.url} cannot be reached. "
            f"Fix: download the file once and put it in $TORCH_HOME/hub/checkpoints/ "
            f"(TORCH_HOME={torch.hub.get_dir()}/..), "
            f"or pass weights=/path/to/state_dict.pth, or train from scratch with weights=none."
        ) from None


def build(arch: str, num_classes: int, weights: str = "none", freeze: str = "none") -> nn.Module:
    from torchvision import models

    if arch not in models.list_models(module=models):
        raise WeightsError(f"unknown arch {arch!r}: see torchvision.models.list_models()")
    w, path = _resolve_weights(arch, weights)
    model = models.get_model(arch, weights=w)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > 2 or unexpected and len(unexpected) > 2:
            raise WeightsError(f"{path} does not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    replace_head(model, num_classes)
    apply_freeze(model, freeze)
    return model


def apply_freeze(model: nn.Module, policy: str) -> None:
    if policy == "none":
        return
    head = {id(p) for p in head_parameters(model)}
    if policy == "backbone":
        for p in model.parameters():
            p.requires_grad = id(p) in head
        return
    layer = policy.split(":", 1)[1]
    names = [n for n, _ in model.named_children()]
    if layer not in names:
        raise ValueError(f"freeze=until:{layer}: no top-level layer {layer!r}; layers are {', '.join(names)}")
    frozen = True
    for name, child in model.named_children():
        if name == layer:
            frozen = False
        for p in child.parameters():
            p.requires_grad = not frozen or id(p) in head
