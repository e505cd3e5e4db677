"""localsage.feed: what the training step is given, on CPU and (where a GPU is present) through CUDA's side stream."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from localsage import data, feed


def loader_batches(count, n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        nhwc = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
        out.append((nhwc.permute(0, 3, 1, 2), torch.randint(0, 5, (n,), generator=g), []))
    return out


def test_batches_normalise_skip_unreadable_log_each_bad_file_once_and_stop_at_the_limit(caplog):
    good = loader_batches(3)
    stream = [good[0], (None, None, [1, 2]), (good[1][0], good[1][1], [1, 3]), good[2]]
    d = SimpleNamespace(loaders={"train": stream}, normalize=data.Normalize(channels_last=True), image_size=8,
                        datasets={"train": SimpleNamespace(paths=[f"img{i}.jpg".encode() for i in range(4)])})
    ranks = SimpleNamespace(world=1, rank=0, device=torch.device("cpu"))
    bad = {"train": set()}
    with caplog.at_level(logging.WARNING, logger="localsage.train"):
        got = list(feed.batches(d, "train", ranks, bad))
    assert len(got) == 3 and bad["train"] == {1, 2, 3}
    assert [r.getMessage() for r in caplog.records].count("skipped unreadable image img1.jpg") == 1
    for (images, labels, weight), (raw, raw_labels, _) in zip(got, good):
        assert weight == 1.0 and torch.equal(labels, raw_labels)
        assert torch.equal(images, data.Normalize()(raw))
    assert len(list(feed.batches(d, "train", ranks, bad, limit=2))) == 1  # the limit counts loader batches
    # data parallel: an all-unreadable train batch becomes a zero-weight stand-in step, not a skipped one
    ranks.world = 2
    weights = [w for _, _, w in feed.batches(d, "train", ranks, {"train": set()})]
    assert weights == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.py's machine)")
def test_cuda_feed_gives_the_cpu_pixels_and_every_kept_batch_stays_intact():
    dev = torch.device("cuda")
    host = loader_batches(8, n=16, size=64, seed=1)
    norm_gpu, norm_cpu = data.Normalize(channels_last=True).to(dev), data.Normalize(channels_last=True)
    kept = []
    for images, labels, weight in feed.to_device(((x.pin_memory(), y.pin_memory(), 1.0) for x, y, _ in host), norm_gpu, dev):
        assert images.is_cuda and labels.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
        kept.append((images, labels, (images * 2).sum()))  # work on the default stream, as a step does
    torch.cuda.synchronize()
    assert len(kept) == len(host)
    for (images, labels, doubled), (raw, raw_labels, _) in zip(kept, host):
        assert torch.allclose(images.cpu(), norm_cpu(raw), atol=1e-6)
        assert torch.equal(labels.cpu(), raw_labels)
        assert torch.allclose(doubled.cpu(), (norm_cpu(raw) * 2).sum(), rtol=1e-4)
