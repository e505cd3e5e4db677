"""Batch normalisation: the loader's uint8 NCHW batches -> float32 (x / 255 - mean) / std on their device,
optionally channels_last, with the serving handler's arithmetic (`Normalize`). The ImageNet mean and std
that training exports into model_config.json live here too.
"""
from __future__ import annotations

import sys

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _references(tensor):
    """(references to its storage's Python object, tensors and storages holding its memory)."""
    storage = tensor.untyped_storage()  # a fresh Python object unless someone else holds one
    return sys.getrefcount(storage), torch._C._storage_Use_Count(storage._cdata)


class Normalize(torch.nn.Module):
    """uint8 NCHW batch -> normalised float batch (on the batch's device), optionally channels_last.

    Arithmetic: -mean/std + x * (1/std) (addcmul; within an ulp of (x - mean) / std), the same as the
    serving handler's (serve/handler_images.py, `Preprocessor.to_batch`), so their pixels match bit for
    bit. On CUDA one kernel does it (casting uint8 on the fly). On CPU torch casts a uint8 operand
    with a full float copy first and then runs the broadcast over a 3-wide inner loop. Done instead on
    row blocks of the NHWC memory (2 MB float, cache-resident) against per-row tiled mean/std vectors, so
    the loop is contiguous and vectorised and the batch is read once and written once, with bit-identical
    results (several times faster: docs/performance.md).

    That loop runs in the calling thread alone (torch's thread count is 1 for its duration). With
    OpenMP's team, libgomp's idle threads spin for a while after every parallel region (~300,000
    pauses), and while the consumer waits for its next batch that spinning takes a core from the
    DataLoader workers; single-threaded, the loop's extra wall time is nothing next to a training step."""

    BLOCK = 1 << 19  # float elements per CPU block (2 MB: one L2-sized half per thread, few parallel regions)

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last=False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.channels_last = channels_last
        self._rows = {}
        self._scratch = torch.empty(0)  # the CPU loop's float block
        self._outputs = []  # CPU output buffers, reused once nothing else holds them (_output)
        # what a tensor nobody else refers to shows (this torch build's counts); None: never reuse
        self._alone = _references(torch.empty(1)) if hasattr(torch._C, "_storage_Use_Count") else None

    POOL = 3

    def _output(self, shape):
        """A channels_last float32 CPU tensor of `shape`, from a pool of at most POOL buffers: a buffer is
        reused only when no tensor but the pool's own refers to its memory (the storage's use count) and
        nobody holds its storage object, so a batch the caller, autograd or a hook still holds is never
        written over. Reuse spares the fresh allocation's page faults: a 32x224x224 output is 19 MB,
        4,704 pages faulted in again each batch by malloc's fresh mmaps, main-process CPU taken from the
        cores the loader's workers need."""
        if self._alone is not None:
            for buf in self._outputs:
                if buf.shape == shape and _references(buf) == self._alone:
                    return buf.detach()  # a new tensor on the same memory: its holder counts in the use count
        buf = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
        self._outputs = [b for b in self._outputs if b.shape == shape][-(self.POOL - 1):] + [buf]
        return buf.detach()

    def forward(self, x):
        shift, scale = -self.mean / self.std, 1 / self.std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        n, c, h, w = x.shape
        nhwc = x.permute(0, 2, 3, 1)
        if x.device.type != "cpu" or not nhwc.is_contiguous() or x.numel() == 0:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=fmt)
            return torch.addcmul(shift, x, scale, out=out)
        key = (w, shift.data_ptr(), scale.data_ptr())
        if key not in self._rows:  # mean/std tiled along one NHWC row: w * c values
            self._rows = {key: (shift.view(1, c).repeat(1, w), scale.view(1, c).repeat(1, w))}
        shift_row, scale_row = self._rows[key]
        out = self._output(x.shape)
        src, dst = nhwc.reshape(n * h, w * c), out.permute(0, 2, 3, 1).view(n * h, w * c)
        step = max(1, self.BLOCK // (w * c))
        if self._scratch.shape != (step, w * c):
            self._scratch = torch.empty((step, w * c))
        scratch = self._scratch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # see the class docstring: no OpenMP team left spinning on the loader's cores
        try:
            for r in range(0, n * h, step):
                rows = src[r:r + step]
                block = scratch[:rows.shape[0]].copy_(rows)  # uint8 -> float, in a reused block
                torch.addcmul(shift_row, block, scale_row, out=dst[r:r + step])
        finally:
            torch.set_num_threads(threads)
        return out if self.channels_last else out.contiguous()
