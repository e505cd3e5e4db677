"""The training recipe's parts, in the order train.main sets them up: ranks and device, precision,
seeds, the model, optimizer and learning-rate schedule (torchvision's reference recipe, made explicit)."""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from localsage.container import distributed, model as model_mod
from localsage.core import procs

log = logging.getLogger("localsage.container.train")


def pick_device(num_gpus: int, local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available() and num_gpus > 0:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 natively (Linux /proc/cpuinfo flags; True when unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & set(flags))


def amp_dtype(device: torch.device, amp: str):
    """bf16 where supported, fp16 (+GradScaler) on older GPUs such as the T4; on CPU only when asked (amp=bf16)."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            log.warning("amp=bf16: this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16), so autocast "
                        "emulates them: measured ~13x slower than fp32 on an AVX2 EPYC; use amp=off here")
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_scheduler(optimizer, hp, steps_per_epoch):
    total = max(1, hp["epochs"] * steps_per_epoch)
    if hp["scheduler"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp["lr"], total_steps=total)
    if hp["scheduler"] == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warm = hp["warmup-epochs"] * steps_per_epoch

    def cosine(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def make_optimizer(model, hp):
    """AdamW or SGD (Nesterov momentum), fused: one kernel updates every parameter (CPU and CUDA), a
    fraction of the default (foreach) implementation's time for the same update (docs/performance.md)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {}
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight-decay"],
                               nesterov=True, **fused)
    return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight-decay"], **fused)


@dataclass
class Ranks:
    """This process in the data-parallel world, and where it computes."""
    rank: int
    world: int
    local_rank: int
    device: torch.device
    amp: torch.dtype | None


@dataclass
class Parts:
    """What a step touches. `model` stays unwrapped (its state_dict is what gets saved);
    `step_model` is the one that trains (DDP and/or torch.compile around it)."""
    model: nn.Module
    step_model: nn.Module
    criterion: nn.Module
    eval_criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


def setup_ranks(contract, hp) -> Ranks:
    # one process per host (CPU) or per GPU; (0, 1, 0) and no process group for a single one
    rank, world, local_rank = distributed.setup_from_contract(contract)
    device = pick_device(contract.num_gpus, local_rank)
    if device.type == "cuda":
        # the input shape is fixed: cuDNN times its algorithms once a shape and keeps the fastest
        # (torchvision's reference does the same; bench/gpu.py's loop part measures it on and off)
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(hp["threads"]))
    seed_everything(hp["seed"] + rank)
    return Ranks(rank, world, local_rank, device, amp_dtype(device, hp["amp"]))


def local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def cpu_threads(threads: int) -> int:
    """torch's intra-op threads on CPU: the `threads` hyperparameter, else $OMP_NUM_THREADS (the share a
    tuner's worker or local mode's hosts give each process on one machine), else this host's cores
    shared by its processes."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if threads:
        return threads
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, procs.cores() // max(1, local_world()))


def build_model(hp, ranks: Ranks, num_classes: int) -> nn.Module:
    model_mod.check_weights_available(hp["arch"], hp["weights"])
    model = model_mod.build(hp["arch"], num_classes, hp["weights"], hp["freeze"]).to(ranks.device)
    if hp["channels-last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_parts(hp, ranks: Ranks, model: nn.Module, steps_per_epoch: int) -> Parts:
    optimizer = make_optimizer(model, hp)
    step_model = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model,
                                             device_ids=[ranks.local_rank] if ranks.device.type == "cuda" else None)
    if hp["compile"]:
        step_model = torch.compile(step_model)
    return Parts(
        model=model, step_model=step_model,
        criterion=nn.CrossEntropyLoss(label_smoothing=hp["label-smoothing"]),
        eval_criterion=nn.CrossEntropyLoss(),  # batch mean: smdebug saves it as the EVAL loss
        optimizer=optimizer, scheduler=make_scheduler(optimizer, hp, steps_per_epoch),
        scaler=torch.amp.GradScaler("cuda", enabled=ranks.amp == torch.float16),
    )
