"""localsage.container.feed: what the training step is given, on CPU and (where a GPU is present) through CUDA's
side stream."""
from __future__ import annotations

import json
import logging
import time
from types import SimpleNamespace

import pytest
import torch

from localsage.container import data, feed
from localsage.container.demo_images import make_demo_data
from localsage.container.normalize import Normalize


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
    d = SimpleNamespace(loaders={"train": stream}, normalize=Normalize(channels_last=True), image_size=8,
                        datasets={"train": SimpleNamespace(paths=[f"img{i}.jpg".encode() for i in range(4)])})
    ranks = SimpleNamespace(world=1, rank=0, device=torch.device("cpu"))
    bad = {"train": set()}
    with caplog.at_level(logging.WARNING, logger="localsage.container.train"):
        got = list(feed.batches(d, "train", ranks, bad))
    assert len(got) == 3 and bad["train"] == {1, 2, 3}
    assert [r.getMessage() for r in caplog.records].count("skipped unreadable image img1.jpg") == 1
    for (images, labels, weight), (raw, raw_labels, _) in zip(got, good):
        assert weight == 1.0 and torch.equal(labels, raw_labels)
        assert torch.equal(images, Normalize()(raw))
    assert len(list(feed.batches(d, "train", ranks, bad, limit=2))) == 1  # the limit counts loader batches
    # data parallel: an all-unreadable train batch becomes a zero-weight stand-in step, not a skipped one
    ranks.world = 2
    weights = [w for _, _, w in feed.batches(d, "train", ranks, {"train": set()})]
    assert weights == [1.0, 0.0, 1.0, 1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.py's machine)")
@pytest.mark.parametrize("threaded", [False, True], ids=["in-line", "feed-thread"])
def test_cuda_feed_gives_the_cpu_pixels_and_every_kept_batch_stays_intact(threaded):
    dev = torch.device("cuda")
    host = loader_batches(8, n=16, size=64, seed=1)
    norm_gpu, norm_cpu = Normalize(channels_last=True).to(dev), Normalize(channels_last=True)
    kept = []
    for images, labels, weight in feed.to_device(((x.pin_memory(), y.pin_memory(), 1.0) for x, y, _ in host),
                                                 norm_gpu, dev, threaded=threaded):
        assert images.is_cuda and labels.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
        kept.append((images, labels, (images * 2).sum()))  # work on the default stream, as a step does
    torch.cuda.synchronize()
    assert len(kept) == len(host)
    for (images, labels, doubled), (raw, raw_labels, _) in zip(kept, host):
        assert torch.allclose(images.cpu(), norm_cpu(raw), atol=1e-6)
        assert torch.equal(labels.cpu(), raw_labels)
        assert torch.allclose(doubled.cpu(), (norm_cpu(raw) * 2).sum(), rtol=1e-4)


class SlowBatches(torch.utils.data.Dataset):
    """Every batch takes `delay` seconds to make (a worker's decoding), fetched whole as ImageDataset's are."""

    def __init__(self, n, delay):
        self.n, self.delay = n, delay

    def __len__(self):
        return self.n

    def __getitems__(self, indexes):
        time.sleep(self.delay)
        return torch.zeros((len(indexes), 3, 8, 8), dtype=torch.uint8), torch.tensor([i % 2 for i in indexes]), []


def test_the_next_epochs_first_batches_are_made_while_the_epoch_before_validates(tmp_path):
    """fit starts epoch k+1's train iterator before validating epoch k: its first step finds its batch ready
    (epoch 1's first step waits for a whole batch; without the early start so would every epoch's)."""
    from localsage.container import train
    from localsage.container.debug_sampler import StepTimer
    from localsage.container.feed import Data
    from localsage.container.recipe import Parts, Ranks
    from localsage.core import contract as contract_mod, hyperparameters
    from localsage.core.debug_names import PROFILE_STEPS

    delay, batch = 0.4, 4
    loaders = {split: torch.utils.data.DataLoader(SlowBatches(n, d), batch_size=batch, shuffle=split == "train",
                                                  num_workers=1, persistent_workers=True, prefetch_factor=2,
                                                  collate_fn=data.collate)
               for split, n, d in (("train", 2 * batch, delay), ("valid", batch, 2 * delay))}
    d = Data({split: None for split in loaders}, loaders, None, ["a", "b"], 8, 8, 1, Normalize())
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    parts = Parts(net, net, torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss(), opt,
                  torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0), torch.amp.GradScaler("cuda", enabled=False))
    contract_mod.make_dirs(tmp_path)
    job = contract_mod.load(root=tmp_path, env={}, gpus=lambda: 0)
    hp = hyperparameters.parse({"epochs": "3"})
    dbg = SimpleNamespace(mode=lambda _: None, timer=StepTimer(tmp_path / "profiler"))
    progress = train.Progress(bad_files={split: set() for split in loaders})
    assert train.fit(job, hp, Ranks(0, 1, 0, torch.device("cpu"), None), d, parts, progress, dbg) is False
    dbg.timer.close()
    rows = [json.loads(line) for line in (tmp_path / "profiler" / PROFILE_STEPS).read_text().splitlines()]
    firsts = [r["dataloader"] for r in rows if r["mode"] == "train" and r["step"] % 2 == 0]
    assert len(firsts) == 3 and len(progress.history) == 3
    assert firsts[0] > 0.8 * delay, firsts  # the job's first batch: nothing could start it earlier
    assert max(firsts[1:]) < delay / 2, firsts


def feed_threads():
    import threading
    return [t for t in threading.enumerate() if t.name == "localsage-feed"]


def test_a_feed_thread_makes_the_next_batch_while_the_step_holds_this_one_and_never_runs_far_ahead():
    import threading

    made, started = [], {k: threading.Event() for k in range(6)}

    def items():
        for k in range(6):
            started[k].set()
            made.append(k)
            yield k

    got = []
    for k in feed.in_thread(items(), ahead=2):
        got.append(k)
        if k + 1 < 6:  # the step holds batch k: batch k + 1 is being made meanwhile, not after it
            assert started[k + 1].wait(timeout=10), f"batch {k + 1} was not started while the step held batch {k}"
        time.sleep(0.05)
        # made ahead: at most 2 waiting in the queue and 1 in the thread's hand
        assert len(made) <= k + 1 + 2 + 1, (k, made)
    assert got == list(range(6)) and not feed_threads()


def test_a_feed_threads_error_is_raised_in_the_step_with_its_type_and_an_early_stop_ends_the_thread():
    def failing():
        yield "a"
        yield "b"
        raise ValueError("image 7 unreadable (strict-data)")

    got = []
    with pytest.raises(ValueError, match="image 7 unreadable") as info:
        for item in feed.in_thread(failing()):
            got.append(item)
    assert got == ["a", "b"] and info.traceback[-1].name == "failing"  # the frame that raised, in the thread
    assert not feed_threads()

    closed = []

    def endless():
        try:
            k = 0
            while True:
                yield k
                k += 1
        finally:
            closed.append(True)

    feed_gen = feed.in_thread(endless())
    assert [next(feed_gen) for _ in range(3)] == [0, 1, 2]
    feed_gen.close()  # the step stopped early (a batch limit, an error in the step, the job's end)
    assert closed == [True] and not feed_threads()


def test_device_decoded_batches_come_from_the_feed_thread_with_the_unthreaded_pixels(tmp_path):
    """decode-on=device: feed.batches runs the decoder in the feed thread; the batches are the ones the
    decoder gives when called in line (torchvision's CPU decoder in nvJPEG's place)."""
    import threading

    from localsage.container import device_decode

    make_demo_data(tmp_path / "d", classes=2, per_class=6, size=48)
    paths = sorted((tmp_path / "d" / "train").rglob("*.jpg"))
    arr = [str(p).encode() for p in paths]
    tf = data.train_transform(32, True, 36)
    ds = device_decode.JpegBatches(arr, [i % 2 for i in range(len(arr))], tf, draft_size=32)
    import random
    random.seed(3)
    raws = [ds.__getitems__(list(range(k, min(k + 4, len(arr))))) for k in range(0, len(arr), 4)]
    decoder = device_decode.DeviceDecoder(tf.spec, "cpu", arr)
    threads = []

    class Spy(device_decode.DeviceDecoder):
        def __call__(self, raw, labels, skipped):
            threads.append(threading.current_thread().name)
            return super().__call__(raw, labels, skipped)

    norm = Normalize(channels_last=True)
    d = SimpleNamespace(loaders={"train": raws}, normalize=norm, image_size=32,
                        datasets={"train": SimpleNamespace(paths=arr)}, place=Spy(tf.spec, "cpu", arr))
    ranks = SimpleNamespace(world=1, rank=0, device=torch.device("cpu"))
    got = list(feed.batches(d, "train", ranks, {"train": set()}))
    assert threads and set(threads) == {"localsage-feed"}
    assert len(got) == len(raws)
    for (images, labels, _), (raw, raw_labels, _) in zip(got, raws):
        want, want_labels = decoder(raw, raw_labels, set())
        assert torch.equal(images, norm(want)) and torch.equal(labels, want_labels)
