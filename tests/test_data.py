"""The input pipeline: decoding (EXIF orientation), transforms, batched fetching, normalisation, the
decoded-image cache (transparency and safety) and the preprocessing spec written for serving."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from localsage.container import data, data_cache, export
from localsage.container.data_cache import cached_decode, plan_cache
from localsage.container.decode import decode
from localsage.container.demo_images import make_demo_data, make_photo_like
from localsage.container.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from localsage.core import serve_dir


def _pil_reference(path, draft=None):
    img = Image.open(path)
    if draft:
        img.draft("RGB", (draft, draft))
    img = ImageOps.exif_transpose(img)
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def _photo(path, width=64, height=48, seed=0):
    make_photo_like(path, width, height, seed=seed)
    return path


# ------------------------------------------------------------------ decoding

def test_decode_matches_pil_for_jpeg_gray_cmyk_png_and_draft(tmp_path):
    make_photo_like(tmp_path / "photo.jpg", 500, 375, seed=3)
    img = Image.open(tmp_path / "photo.jpg")
    img.convert("L").save(tmp_path / "gray.jpg", quality=90)
    img.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    img.convert("RGBA").save(tmp_path / "rgba.png")
    img.resize((1000, 750)).save(tmp_path / "big.jpg", quality=90)
    for name in ("photo.jpg", "gray.jpg", "cmyk.jpg", "rgba.png"):
        ours = decode(str(tmp_path / name), draft_size=224)
        assert ours.dtype == torch.uint8 and ours.shape == (3, 375, 500), name
        assert ours.permute(1, 2, 0).is_contiguous(), name  # the decoder's HWC memory, seen as CHW
        assert torch.equal(ours, _pil_reference(tmp_path / name)), name
    # >= 2x the target: DCT-scaled decode, the same pixels as PIL's draft (the serving handler's call)
    big = decode(str(tmp_path / "big.jpg"), draft_size=224)
    assert big.shape == (3, 375, 500) and torch.equal(big, _pil_reference(tmp_path / "big.jpg", 224))
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:3000])
    with pytest.raises(Exception):
        decode(str(tmp_path / "trunc.jpg"))


def _with_orientation(src: Image.Image, path, orientation, size=None):
    exif = Image.Exif()
    exif[0x0112] = orientation
    (src.resize(size) if size else src).save(path, quality=92, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied_as_pil_exif_transpose_does(tmp_path):
    base = Image.open(_photo(tmp_path / "base.jpg", 64, 48, seed=5)).convert("RGB")
    for orientation in range(1, 9):
        for size, draft in ((None, None), ((640, 480), 100)):  # libjpeg-turbo path; PIL draft path
            path = _with_orientation(base, tmp_path / f"o{orientation}-{draft}.jpg", orientation, size)
            ours = decode(str(path), draft)
            ref = _pil_reference(path, draft)
            assert ours.shape == ref.shape and torch.equal(ours, ref), (orientation, draft)
            assert ours.permute(1, 2, 0).is_contiguous()
    # other formats go through PIL's exif_transpose
    exif = Image.Exif()
    exif[0x0112] = 8
    base.save(tmp_path / "o8.png", exif=exif.tobytes())
    assert torch.equal(decode(str(tmp_path / "o8.png")), _pil_reference(tmp_path / "o8.png"))
    assert decode(str(tmp_path / "o8.png")).shape == (3, 64, 48)


@pytest.mark.parametrize("cached", [False, True])
def test_training_sees_an_exif_rotated_jpeg_as_the_pre_rotated_image(tmp_path, monkeypatch, cached):
    """A phone photo stored sideways with EXIF orientation 6 trains on the same tensor as the same
    pixels stored upright (what serving sees after exif_transpose)."""
    base = Image.open(_photo(tmp_path / "base.jpg", 80, 60, seed=7)).convert("RGB")
    for split in ("sideways", "upright"):
        (tmp_path / split / "001.Cls").mkdir(parents=True)
    base.save(tmp_path / "plain.jpg", quality=92)  # the same encoder input and settings: the same pixels
    _with_orientation(base, tmp_path / "sideways" / "001.Cls" / "a.jpg", 6)
    stored = np.asarray(Image.open(tmp_path / "plain.jpg").convert("RGB"))
    upright = Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270)  # 90 degrees clockwise
    upright.save(tmp_path / "upright" / "001.Cls" / "a.png")  # lossless: exactly the rotated pixels
    monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(tmp_path / "cache"))
    out = {}
    for split in ("sideways", "upright"):
        paths, targets, _ = data.scan_split(tmp_path / split, split)
        cache = plan_cache({split: paths}, "decoded") if cached else None
        for name, tf in (("train", data.train_transform(32)), ("eval", data.eval_transform(32, 40))):
            ds = data.ImageDataset(paths, targets, tf, draft_size=32, cache=cache)
            for epoch in range(2):  # with the cache: a cold, then a warm read
                random.seed(epoch)
                images, labels, bad = data.collate(ds.__getitems__([0]))
                out.setdefault((name, epoch), []).append(images)
    assert torch.equal(decode(str(tmp_path / "sideways" / "001.Cls" / "a.jpg")),
                       torch.from_numpy(np.asarray(upright).copy()).permute(2, 0, 1))
    for key, (sideways, upright_batch) in out.items():
        assert sideways.shape == (1, 3, 32, 32)
        assert torch.equal(sideways, upright_batch), key


# ------------------------------------------------------------------ transforms and batches

def test_train_transform_is_torchvisions_random_resized_crop_and_flip(tmp_path):
    from torchvision.transforms import v2

    img = decode(str(_photo(tmp_path / "p.jpg", 120, 90, seed=1)))
    tf = data.train_transform(40)
    flips = 0
    for k in range(40):
        random.seed(k)
        top, left, h, w = tf.params(90, 120)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 120
        assert 0.08 * 0.9 <= h * w / (90 * 120) <= 1.0
        random.seed(k)
        ours = tf(img)
        ref = v2.functional.resized_crop(img.contiguous(), top, left, h, w, [40, 40], antialias=True)
        assert ours.shape == (3, 40, 40)
        if torch.equal(ours, ref.flip(-1)) and not torch.equal(ours, ref):
            flips += 1
        else:
            assert torch.equal(ours, ref), k
    assert 8 <= flips <= 32  # p = 0.5
    # the fallback (no crop found in 10 tries) is torchvision's central crop
    assert tf.params(10, 1000) == (0, (1000 - round(10 * 4 / 3)) // 2, 10, round(10 * 4 / 3))


def test_eval_transform_is_torchvisions_resize_and_center_crop(tmp_path):
    from torchvision.transforms import v2

    for w, h in ((120, 90), (90, 120), (50, 50)):
        img = decode(str(_photo(tmp_path / f"p{w}.jpg", w, h, seed=2)))
        ref = v2.Compose([v2.Resize(37, antialias=True), v2.CenterCrop(32)])(img.contiguous())
        assert torch.equal(data.eval_transform(32, 37)(img), ref), (w, h)


def test_batched_fetch_matches_per_image_items_and_reports_bad_files(tmp_path):
    root = make_demo_data(tmp_path / "d", classes=2, per_class=5, size=40, corrupt=2)
    paths, targets, _ = data.scan_split(root / "train", "train")
    for tf in (data.eval_transform(24), data.train_transform(24)):
        ds = data.ImageDataset(paths, targets, tf, draft_size=24)
        indexes = list(range(len(ds)))
        random.seed(3)
        batch = ds.__getitems__(indexes)
        random.seed(3)
        one_by_one = data.collate([ds[i] for i in indexes])
        assert data.collate(batch) is batch
        images, labels, bad = batch
        assert images.dtype == torch.uint8 and images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(images, one_by_one[0]) and torch.equal(labels, one_by_one[1])
        assert sorted(bad) == sorted(one_by_one[2]) and len(bad) == 2
        assert "corrupt" in paths[bad[0]].decode()
    # through a worker: the batch arrives whole, bad files counted
    ds = data.ImageDataset(paths, targets, data.eval_transform(24), draft_size=24)
    seen, bad_seen = 0, []
    for images, labels, bad in data.make_loader(ds, 4, False, 1):
        if images is not None:
            assert images.shape[1:] == (3, 24, 24) and len(labels) == images.shape[0]
            seen += images.shape[0]
        bad_seen += bad
    assert seen == len(paths) - 2 and len(bad_seen) == 2
    # a batch of only unreadable files
    assert ds.__getitems__(sorted(bad_seen)) == (None, None, sorted(bad_seen))


def test_reused_batch_slots_give_the_same_batches_and_kept_batches_stay_intact(tmp_path, monkeypatch):
    """The train loader's workers hand over shared-memory slots (batch_ring) without a copy: every batch,
    streamed or kept for two epochs, equals what one segment a batch gives with the same seed, bad
    files included; a streamed batch is the slot itself, a kept one is never written over."""
    root = make_demo_data(tmp_path / "d", classes=2, per_class=14, size=40, corrupt=2)
    paths, targets, _ = data.scan_split(root / "train", "train")
    monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(tmp_path / "cache"))

    def loader(reuse):
        ds = data.ImageDataset(paths, targets, data.train_transform(24), draft_size=24,
                               cache=plan_cache({"train": paths}, "decoded"))
        out = data.make_loader(ds, 2, True, 2, reuse_batches=reuse, seed=5)
        assert (ds.ring is not None) == reuse
        return out, ds.ring

    def in_ring(images, ring):
        start = ring.data.data_ptr()
        return start <= images.data_ptr() < start + ring.data.numel()

    one_segment_a_batch, _ = loader(False)
    reference = [b for _ in range(2) for b in one_segment_a_batch]
    streaming, ring = loader(True)
    streamed = 0
    for images, labels, bad in (b for _ in range(2) for b in streaming):  # each batch dropped before the next
        ref_images, ref_labels, ref_bad = reference[streamed]
        streamed += 1
        assert (images is None) == (ref_images is None) and bad == ref_bad
        if images is not None:
            assert in_ring(images, ring)  # the slot itself: nothing copied, no fallback segment
            assert images.dtype == torch.uint8 and images.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    assert streamed == len(reference) > ring.busy.numel()  # more batches than slots: slots reused
    del images
    assert not int(ring.busy.sum())

    keeping, ring = loader(True)
    kept = [b for _ in range(2) for b in keeping]
    held = [b[0] for b in kept if b[0] is not None and in_ring(b[0], ring)]
    assert int(ring.busy.sum()) == len(held) == ring.busy.numel()  # every slot held; the rest fell back
    for (images, labels, bad), (ref_images, ref_labels, ref_bad) in zip(kept, reference, strict=True):
        assert (images is None) == (ref_images is None) and bad == ref_bad
        if images is not None:
            assert torch.equal(images, ref_images) and labels.dtype == torch.long and torch.equal(labels, ref_labels)
    assert sum(len(b) for _, _, b in kept) == 4  # 2 bad files x 2 epochs
    del kept, held, images
    assert not int(ring.busy.sum())  # all freed once dropped


def test_a_held_slot_is_skipped_and_freed_only_by_its_receiver():
    import gc

    from localsage.container import batch_ring

    ring = batch_ring.Ring(workers=1, slots=2, shape=(4, 8, 8, 3))
    slot, view = ring.take(0, 3)
    assert view.shape == (3, 8, 8, 3) and ring.take(0, 5) is None and ring.take(1, 3) is None  # too big; no worker 1
    view.fill_(9)
    first = batch_ring.receive(ring.id, *ring.send(slot, 3, [1, 0, 1], [7]).args[1:])
    images, labels, bad = first
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [1, 0, 1] and bad == [7] and int(images.min()) == 9
    other, _ = ring.take(0, 1)
    assert other != slot  # the held slot is skipped
    second = batch_ring.receive(ring.id, *ring.send(other, 1, [0], []).args[1:])
    t0 = time.monotonic()
    assert ring.take(0, 3) is None and time.monotonic() - t0 < 0.1  # both held: fall back at once, no wait
    pid = os.fork()
    if pid == 0:  # a forked child drops its inherited copy of the batches: the parent's slots stay held
        del first, second, images
        gc.collect()
        os._exit(0 if int(ring.busy.sum()) == 2 else 1)
    assert os.waitpid(pid, 0)[1] == 0 and int(ring.busy.sum()) == 2
    del first, images
    assert ring.take(0, 3)[0] == slot  # dropped by its receiver: free again
    del second


def test_cache_reads_into_a_reused_buffer_match_fresh_reads(tmp_path):
    cache = data_cache.private_dir(tmp_path / "cache")
    files = [str(_photo(tmp_path / f"{i}.jpg", 40 + 8 * i, 30, seed=i)) for i in range(3)]
    fresh = [cached_decode(f, None, cache).clone() for f in files]  # fills the cache
    buf, views = data_cache.ReadBuffer(), []
    for f, ref in zip(files + files[::-1], fresh + fresh[::-1]):  # sizes grow, shrink, grow again
        got = cached_decode(f, None, cache, buf)
        assert torch.equal(got, ref)  # a view of the buffer, after the entry's header
        assert got.data_ptr() == torch.frombuffer(buf.buf, dtype=torch.uint8).data_ptr() + data_cache.HEADER
        views.append(got)  # a live view never stops the buffer from growing


def test_normalize_matches_the_formula_in_the_requested_layout():
    threads = torch.get_num_threads()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    nchw = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8)
    nhwc = nchw.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # what the loader hands over
    reference = (nchw.float() - mean) / std
    one_pass = torch.addcmul(-mean / std, nchw, 1 / std)  # the serving handler's arithmetic
    for x in (nchw, nhwc):
        for channels_last in (False, True):
            norm = Normalize(channels_last=channels_last)
            norm.BLOCK = 24 * 3 * 7  # several blocks, the last one partial
            out = norm(x)
            assert out.dtype == torch.float32 and out.shape == x.shape
            assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
            assert torch.equal(out, one_pass)
            assert torch.get_num_threads() == threads  # its one-thread loop gives the threads back


FAULTS_PER_BATCH = """
import resource, sys, torch
from localsage.container.normalize import Normalize
norm = Normalize(channels_last=True)
if sys.argv[1] == "fresh":
    norm._output = lambda shape: torch.empty(shape, memory_format=torch.channels_last)
x = torch.randint(0, 256, (32, 224, 224, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
faults = []
for _ in range(12):  # as in training: a fresh batch each step, the last step's batch and output held meanwhile
    batch = x.clone()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = norm(batch)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]) / 10)
"""


def test_normalize_reuses_an_output_buffer_only_once_nothing_holds_it():
    norm = Normalize(channels_last=True)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    first = norm(x)
    kept = first.clone()
    second = norm(x.flip(0).contiguous(memory_format=torch.channels_last))  # `first` still held
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)
    view = second[0]
    del second
    third = norm(x)  # `second` is gone but a view of it is not
    assert third.data_ptr() not in (first.data_ptr(), view.data_ptr())
    storage = third.untyped_storage()
    del third
    fourth = norm(x)  # only the storage of `third` is held
    assert fourth.data_ptr() not in (first.data_ptr(), view.data_ptr(), storage.data_ptr())
    pointers = {first.data_ptr(), view.data_ptr(), storage.data_ptr(), fourth.data_ptr()}
    del first, view, storage, fourth, kept
    assert norm(x).data_ptr() in pointers  # nothing held any more: a pooled buffer is reused
    assert len(norm._outputs) <= norm.POOL


def test_normalize_does_not_fault_in_a_fresh_output_each_batch():
    """A 32x224x224 batch's 19 MB float output is a reused buffer, not fresh memory faulted in again."""
    def faults(mode):
        run = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        return float(run.stdout.split()[-1])

    pooled, fresh = faults("pooled"), faults("fresh")
    assert fresh > 50  # the planted fault: a fresh output each batch (malloc faults much of it in again)
    assert pooled < 20, (pooled, fresh)


# ------------------------------------------------------------------ the decoded-image cache

def _entry(cache, path, draft):
    return data_cache.entry_path(cache, path, draft)


def test_decoded_cache_is_transparent_shared_and_invalidated(tmp_path, monkeypatch):
    root = make_demo_data(tmp_path / "d", classes=2, per_class=6, size=48, corrupt=2)
    monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(tmp_path / "cache"))
    paths, targets, _ = data.scan_split(root / "train", "train")
    assert plan_cache({"train": paths}, "off") is None
    cache = plan_cache({"train": paths}, "decoded")
    assert cache == tmp_path / "cache"
    tf = data.eval_transform(32)
    plain = data.ImageDataset(paths, targets, tf, draft_size=37)
    cached = data.ImageDataset(paths, targets, tf, draft_size=37, cache=cache)
    cold = [cached[i] for i in range(len(paths))]
    files = sorted(cache.rglob("*.hwc"))
    good = len(paths) - 2
    assert len(files) == good  # corrupt files are never cached
    assert not list(cache.rglob("*.tmp"))
    warm = [cached[i] for i in range(len(paths))]
    for i in range(len(paths)):
        ref = plain[i]
        for got in (cold[i], warm[i]):
            assert (got[0] is None) == (ref[0] is None)
            if ref[0] is not None:
                assert torch.equal(got[0][0], ref[0][0]) and got[0][1] == ref[0][1]
    # warm reads come from the cache: poison one entry's pixels and see them
    first = next(i for i in range(len(paths)) if plain[i][0] is not None)
    path = paths[first].decode()
    entry = _entry(cache, path, 37)
    raw = bytearray(entry.read_bytes())
    raw[data_cache.HEADER:] = bytes(len(raw) - data_cache.HEADER)
    entry.write_bytes(bytes(raw))
    assert int(cached[first][0][0].sum()) == 0
    # a changed source file gets a new entry (the old one is never read again)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert torch.equal(cached[first][0][0], plain[first][0][0])
    assert len(list(cache.rglob("*.hwc"))) == good + 1
    # a truncated entry is treated as a miss and rewritten
    entry.write_bytes(b"xx")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert torch.equal(cached[first][0][0], plain[first][0][0])
    assert entry.stat().st_size == len(raw)
    # too little disk, or more than the memory that would keep it in the page cache: off
    monkeypatch.setattr(data_cache, "memory_available", lambda: 1000)
    assert plan_cache({"train": paths}, "decoded") is None
    monkeypatch.undo()
    monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(data_cache, "cache_estimate", lambda p: 1 << 60)
    assert plan_cache({"train": paths}, "decoded") is None


def test_cache_folder_is_private_to_the_user_and_entries_are_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALSAGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    img = _photo(tmp_path / "p.jpg")
    cache = plan_cache({"train": [str(img)]}, "decoded")
    assert cache == tmp_path / f"localsage-cache-{os.getuid()}"
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
    cached_decode(str(img), None, cache)
    entry = _entry(cache, str(img), None)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) & 0o077 == 0


def test_cache_refuses_a_folder_of_another_user_open_to_others_or_a_symlink(tmp_path, monkeypatch, caplog):
    img = str(_photo(tmp_path / "p.jpg"))
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(foreign, 65534, 65534)
    else:  # cannot give a folder away: pretend to be someone else instead
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    for folder, why in ((foreign, "belongs to uid"), (open_dir, "mode 755"), (link, "not a folder")):
        monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(folder))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="localsage.container.data"):
            assert plan_cache({"train": [img]}, "decoded") is None, folder
        assert "decoded-image cache off" in caplog.text and why in caplog.text, caplog.text
    assert not list(private.iterdir()) and not list(open_dir.iterdir())


def test_cache_writes_never_follow_a_planted_symlink(tmp_path):
    cache = data_cache.private_dir(tmp_path / "cache")
    img = str(_photo(tmp_path / "p.jpg"))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    entry = _entry(cache, img, None)
    entry.parent.mkdir(mode=0o700)
    # every temp name the old code could pick (<entry>.<pid>.tmp), and the entry itself
    for pid in range(os.getpid() - 50, os.getpid() + 50):
        (entry.parent / f"{entry.name}.{pid}.tmp").symlink_to(victim)
    entry.symlink_to(victim)
    got = cached_decode(img, None, cache)  # the entry is a symlink: a miss, never followed
    assert torch.equal(got, decode(img)) and victim.read_bytes() == b"precious"
    assert entry.is_file() and not entry.is_symlink()  # replaced by a real entry
    # a symlink to a well-formed entry with other pixels is not read either
    other = tmp_path / "other.hwc"
    raw = bytearray(entry.read_bytes())
    raw[data_cache.HEADER:] = bytes(len(raw) - data_cache.HEADER)
    other.write_bytes(bytes(raw))
    entry.unlink()
    entry.symlink_to(other)
    assert torch.equal(cached_decode(img, None, cache), decode(img))


@pytest.mark.parametrize("kind", ["directory", "fifo", "unreadable", "truncated", "foreign-format", "empty"])
def test_any_broken_cache_entry_is_a_miss_never_an_unreadable_image(tmp_path, monkeypatch, kind):
    cache = data_cache.private_dir(tmp_path / "cache")
    root = tmp_path / "d" / "001.Cls"
    root.mkdir(parents=True)
    img = str(_photo(root / "p.jpg"))
    entry = _entry(cache, img, None)
    entry.parent.mkdir(mode=0o700)
    if kind == "directory":
        entry.mkdir()
    elif kind == "fifo":
        os.mkfifo(entry, 0o600)
    elif kind == "unreadable":
        entry.write_bytes(b"x" * 100)
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path) == str(entry):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(data_cache.os, "open", refuse)
    elif kind == "truncated":
        cached_decode(img, None, cache)
        entry.write_bytes(entry.read_bytes()[:-10])
    elif kind == "foreign-format":
        cached_decode(img, None, cache)
        entry.write_bytes(b"XXXX" + entry.read_bytes()[4:])
    else:
        entry.write_bytes(b"")
    paths, targets, _ = data.scan_split(tmp_path / "d", "train")
    ds = data.ImageDataset(paths, targets, None, cache=cache)
    item, _ = ds[0]
    assert item is not None, kind  # never counted as an unreadable image
    assert torch.equal(item[0], decode(img)), kind


def _decode_many(args):
    paths, cache = args
    return [cached_decode(p, None, cache).sum().item() for p in paths]


def test_concurrent_jobs_share_the_cache_safely(tmp_path):
    cache = data_cache.private_dir(tmp_path / "cache")
    paths = [str(_photo(tmp_path / f"p{i}.jpg", seed=i)) for i in range(12)]
    expected = [decode(p).sum().item() for p in paths]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        results = pool.map(_decode_many, [(paths, cache)] * 3)
    assert all(r == expected for r in results)
    assert len(list(cache.rglob("*.hwc"))) == len(paths) and not list(cache.rglob("*.tmp"))
    assert [cached_decode(p, None, cache).sum().item() for p in paths] == expected


# ------------------------------------------------------------------ the preprocessing spec

def test_preprocess_spec_builds_the_transforms_and_goes_into_model_config(tmp_path, monkeypatch):
    spec = data.preprocess_spec(64, 0)
    assert spec["resize"] == data.default_resize(64) == 73 and spec["crop"] == 64
    assert spec["interpolation"] == "bilinear" and spec["antialias"] is True and spec["exif_transpose"] is True
    assert spec["mean"] == list(IMAGENET_MEAN) and spec["std"] == list(IMAGENET_STD)
    assert data.eval_transform(64).spec == spec and data.train_transform(64).spec == spec
    assert data.preprocess_spec(64, 80)["resize"] == 80
    config = export.model_config("resnet18", ["a", "b"], 64, 73, IMAGENET_MEAN, IMAGENET_STD)
    assert config["preprocess"] == spec
    assert {"arch", "num_classes", "image_size", "resize_size", "mean", "std", "classes"} <= set(config)
    monkeypatch.setenv("LOCALSAGE_SERVE_DIR", str(serve_dir.serve_dir()))
    export.save_model(tmp_path / "model", {}, config)
    written = json.loads((tmp_path / "model" / export.CONFIG_FILE).read_text())
    assert written["preprocess"] == json.loads(json.dumps(spec))


def test_amp_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog):
    from localsage.container import recipe

    monkeypatch.setattr(recipe, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="localsage.container.train"):
        assert recipe.amp_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    assert "no bfloat16 instructions" in caplog.text
    monkeypatch.setattr(recipe, "cpu_has_bf16", lambda: True)
    caplog.clear()
    assert recipe.amp_dtype(torch.device("cpu"), "bf16") is torch.bfloat16 and not caplog.text
    assert recipe.amp_dtype(torch.device("cpu"), "auto") is None
