"""The training data and what the training loop steps on: the splits' datasets and loaders (`load_data`,
`Data`), and the loader's uint8 batches, unreadable images skipped, put on the training device and
normalised there (`batches`). With decode-on=device the train loader's batches are JPEG files that
localsage.container.device_decode decodes and augments on the device (`Data.place`), in a feed thread that works
up to AHEAD batches before the step (`in_thread`): in the training thread, each batch's decode would sit
between two steps.

On CPU each batch is normalised where it is (`normalize.Normalize`), as it comes.

On CUDA the feed runs one batch ahead on a side stream: batch k+1's host-to-device copy (from the
DataLoader's pinned memory) and its normalisation kernel are issued *before* batch k is handed to
the step, so the copy engine moves k+1 while the default stream computes k, and the default stream
only waits on an event that is long done when step k+1 starts. Issued in line instead, each copy
sits on the default stream between two steps (128 x 224 x 224 x 3 uint8 is 19 MB over PCIe, on top
of the host's own time to fetch the batch), time in which the GPU computes nothing. The cost is one
batch more on the GPU (77 MB of float32 at that size).

Memory safety across the two streams: tensors made on the side stream and used on the default one
are marked with `record_stream`, so the caching allocator does not hand their memory to the side
stream's next batch while the step still reads it; the pinned source is kept safe by torch's
pinned-memory allocator, which records the copy's stream itself.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import torch
from torch import nn

from localsage.container import data, device_decode, distributed, shm
from localsage.container.data_cache import cache_estimate, plan_cache
from localsage.container.normalize import Normalize
from localsage.container.recipe import local_world

log = logging.getLogger("localsage.container.train")


@dataclass
class Data:
    datasets: dict
    loaders: dict
    train_sampler: object
    classes: list
    image_size: int
    resize_size: int
    workers: int
    normalize: nn.Module
    place: object = None  # host batch, labels -> on the device (None: a copy); device_decode.DeviceDecoder


def load_data(indexed: dict, folders: list, hp, ranks) -> Data:
    """The splits' datasets and loaders for this rank (train.Ranks), the train batches' way to the device."""
    image_size = hp["image-size"]
    resize_size = hp["resize-size"] or data.default_resize(image_size)
    datasets, place = {}, None
    on_device = hp["decode-on"] == "device" and hp["augment"]
    if hp["decode-on"] == "device" and not hp["augment"]:
        log.warning("decode-on=device decodes augmented train batches only: "
                    "augment=false keeps decoding on the workers")
    if on_device:
        device_decode.check_device(ranks.device)
    if on_device and ranks.device.type != "cuda":
        log.warning("decode-on=device on %s decodes in the training process, one image at a time: slower than the "
                    "workers (meant for CUDA's nvJPEG)", ranks.device)
    cache = plan_cache({split: idx[0] for split, idx in indexed.items() if not (on_device and split == "train")},
                       hp["data-cache"])
    for split, (paths, targets, _) in indexed.items():
        train = split == "train"
        tf = (data.train_transform(image_size, hp["augment"], resize_size) if train
              else data.eval_transform(image_size, resize_size))
        draft = image_size if train and hp["augment"] else resize_size
        if train and on_device:  # the workers read files and draw crops; the device decodes (device_decode.py)
            datasets[split] = device_decode.JpegBatches(paths, targets, tf, draft_size=draft, strict=hp["strict-data"])
            place = device_decode.DeviceDecoder(tf.spec, ranks.device, paths, strict=hp["strict-data"])
            continue
        datasets[split] = data.ImageDataset(paths, targets, tf, draft_size=draft, strict=hp["strict-data"], cache=cache)
    workers = data.default_workers() if hp["workers"] < 0 else hp["workers"]
    plan = shm_plan(hp, datasets, workers, cache, indexed)
    workers = plan.workers
    pin = ranks.device.type == "cuda"
    # data parallel: each rank trains on its DistributedSampler share and evaluates a disjoint shard
    sampler = None
    if ranks.world > 1:
        sampler = torch.utils.data.DistributedSampler(datasets["train"], ranks.world, ranks.rank, shuffle=True,
                                                      seed=hp["seed"])
    loaders = {
        split: data.make_loader(distributed.shard(ds, ranks.rank, ranks.world) if split != "train" else ds,
                                hp["batch-size"], split == "train", workers, pin,
                                sampler=sampler if split == "train" else None, seed=hp["seed"], prefetch=plan.prefetch)
        for split, ds in datasets.items()
    }
    normalize = Normalize(channels_last=hp["channels-last"]).to(ranks.device)
    return Data(datasets, loaders, sampler, [data.class_name(f) for f in folders], image_size, resize_size,
                workers, normalize, place)


def shm_plan(hp, datasets: dict, workers: int, cache, indexed: dict) -> shm.LoaderPlan:
    """The loaders' workers and prefetch, fitted to this process's share of /dev/shm (localsage.container.shm; the
    decoded-image cache's estimate set aside when its folder is there too); logged when it had to shrink."""
    reserved = 0
    if cache is not None and shm.on_shm(cache):
        reserved = sum(cache_estimate(idx[0]) for split, idx in indexed.items() if split in datasets
                       and getattr(datasets[split], "cache", None) is not None)
    batch = shm.batch_bytes(hp["batch-size"], hp["image-size"])
    plan = shm.plan_loaders(shm.space(local_world(), reserved), workers, data.PREFETCH, batch, batch,
                            ring=data.reuses_batches(datasets["train"], True, workers))
    if plan.shrunk:
        log.warning(plan.describe())
    return plan


def start_train_epoch(d, epoch: int):
    """The train loader's iterator for `epoch`, started: its workers begin on the epoch's first batches now.

    The epoch loop calls this before validating the epoch before, so those batches are ready when the
    step wants them. Started at the epoch's first step instead, every epoch opened with a wait of one
    worker's whole batch (a few percent of a short GPU epoch: docs/performance.md). Same samples either
    way: the sampler draws the epoch's order when the iterator starts."""
    if d.train_sampler is not None:
        d.train_sampler.set_epoch(epoch)
    return iter(d.loaders["train"])


def batches(d, split: str, ranks, bad_files: dict, limit: int = 0, source=None):
    """(normalised images, labels, weight) on ranks.device, from d.loaders[split] (train.Data) or `source`,
    its iterator already started; each unreadable image logged once (bad_files[split] remembers it) and
    skipped; at most `limit` batches. A device decoder's batches are made in a thread (`in_thread`)."""
    place = getattr(d, "place", None) if split == "train" else None
    if place is not None and source is None:  # the loader's workers start here, not in the feed thread
        source = iter(d.loaders[split])
    return to_device(host_batches(d, split, ranks, bad_files, limit, source), d.normalize, ranks.device, place,
                     bad_files.get(split), stand_in=ranks.world > 1 and split == "train", threaded=place is not None)


def host_batches(d, split: str, ranks, bad_files: dict, limit: int = 0, source=None):
    """The loader's (uint8 images, labels, weight) batches, unreadable images logged once and skipped."""
    for step, (images, labels, bad) in enumerate(d.loaders[split] if source is None else source):
        for index in bad:
            if index not in bad_files[split]:
                bad_files[split].add(index)
                log.warning("skipped unreadable image %s", d.datasets[split].paths[index].decode())
        if limit and step >= limit:
            break
        if images is None:  # every image of the batch unreadable
            if not (ranks.world > 1 and split == "train"):
                continue
            # DDP: each step's gradient all-reduce needs every rank, so a rank with nothing to
            # train on takes the step with a two-image stand-in (BatchNorm needs > 1 value per
            # channel) whose loss is multiplied by 0, instead of skipping it and leaving the
            # other ranks waiting
            log.warning("rank %d: batch %d of %s had no readable image: zero-weight step", ranks.rank, step, split)
            images, labels, weight = stand_in_batch((3, d.image_size, d.image_size))
        else:
            weight = 1.0
        yield images, labels, weight


def stand_in_batch(shape, device=None):
    """DDP's zero-weight step for a rank whose batch has no readable image: two black images of `shape`
    (C, H, W) and their labels, weight 0."""
    return (torch.zeros((2, *shape), dtype=torch.uint8, device=device),
            torch.zeros((2,), dtype=torch.long, device=device), 0.0)


def copy_to(device: torch.device):
    def place(images, labels, skipped):
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return place


def to_device(batches, normalize, device: torch.device, place=None, skipped=None, stand_in=False, threaded=False):
    """(uint8 NCHW images, labels, weight) on the host -> (normalised images, labels, weight) on `device`.
    `place(images, labels, skipped)` puts a host batch on the device as uint8 NCHW (default: a copy;
    device_decode.DeviceDecoder decodes the workers' JPEG batches there, adding to `skipped` the
    indexes of files it could not read; a batch left empty is skipped, or with `stand_in` (DDP's train
    split) becomes host_batches' zero-weight stand-in). `threaded`: batches are placed and normalised
    in a thread, AHEAD of the step (`in_thread`), not between two steps in the training thread."""
    placed = _placed(batches, place or copy_to(device), set() if skipped is None else skipped, stand_in)
    if device.type != "cuda":
        staged = ((normalize(images), labels, weight) for images, labels, weight in placed)
        yield from in_thread(staged) if threaded else staged
        return
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    staged = _on_stream(placed, normalize, side)
    if threaded:
        for item in in_thread(staged):
            yield _hand_over(item, main)
        return
    ahead = None
    for item in staged:  # batch k + 1 is issued on the side stream before batch k goes to the step
        if ahead is not None:
            yield _hand_over(ahead, main)
        ahead = item
    if ahead is not None:
        yield _hand_over(ahead, main)


def _on_stream(placed, normalize, side):
    """Each placed batch normalised on the `side` stream, with the event that says it is ready."""
    while True:
        with torch.cuda.stream(side):  # also the stream's device, in whichever thread runs this
            item = next(placed, None)
            if item is None:
                return
            images, labels, weight = item
            images = normalize(images)
            ready = torch.cuda.Event()
            ready.record(side)
        yield images, labels, weight, ready


# Batches a feed thread makes ahead of the step. A device decoder's batch costs the thread that makes it
# host time (nvJPEG's call waits for its own stream; ~4 small kernels an image are launched for the crop
# and resize): in the training thread that time sat between two steps with the GPU idle.
AHEAD = 2
_END = object()


def in_thread(items, ahead: int = AHEAD):
    """`items`' items, in order, made by a daemon thread at most `ahead` items before they are taken. An
    exception there is raised here (its own type and traceback); closing this generator (an early break,
    an error in the step, the end of the job) stops the thread, which closes `items` itself."""
    made = queue.Queue(ahead)
    stop = threading.Event()

    def hand(item) -> bool:
        while not stop.is_set():
            try:
                made.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in items:
                if not hand((item, None)):
                    return
            hand((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            hand((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="localsage-feed", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = made.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)  # at most the batch it is making; a daemon thread never holds up the exit


def _placed(batches, place, skipped: set, stand_in: bool):
    for images, labels, weight in batches:
        images, labels = place(images, labels, skipped)
        if not labels.numel():  # the device decoder could read none of the batch's files (a shape test: no sync)
            if not stand_in:
                continue
            images, labels, weight = stand_in_batch(images.shape[1:], images.device)
        yield images, labels, weight


def _hand_over(item, main):
    images, labels, weight, ready = item
    main.wait_event(ready)  # the step's kernels queue behind the batch's copy and normalisation
    images.record_stream(main)
    labels.record_stream(main)
    return images, labels, weight
