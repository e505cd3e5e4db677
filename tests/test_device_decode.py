"""decode-on=device (localsage.container.device_decode): the workers read files and draw crops, the training
device decodes and augments. Checked on the CPU device (torchvision's CPU decoder) against the workers' path; the nvJPEG
run needs a GPU."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_HP
from localsage.container import data, device_decode, feed
from localsage.container.decode import decode
from localsage.container.demo_images import make_demo_data, make_photo_like
from localsage.container.normalize import Normalize
from localsage.core.hyperparameters import HyperparameterError
from localsage.host import runner


def _orientated(base: Image.Image, path: Path, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    base.save(path, quality=92, exif=exif.tobytes())
    return str(path).encode()


def _both(paths, crop, seed=0, draft=True):
    """(the device path's batch, its raw batch, the workers' batch) for the same files and RNG state."""
    paths = np.array(paths, dtype=np.bytes_)
    targets = np.arange(len(paths), dtype=np.int64)
    spec = data.preprocess_spec(crop)
    draft_size = crop if draft else None
    dev_set = device_decode.JpegBatches(paths, targets, data.TrainTransform(spec), draft_size=draft_size)
    cpu_set = data.ImageDataset(paths, targets, data.TrainTransform(spec), draft_size=draft_size)
    random.seed(seed)
    raw, labels, bad = dev_set.__getitems__(list(range(len(paths))))
    images, labels = device_decode.DeviceDecoder(spec, "cpu", paths)(raw, labels, set())
    random.seed(seed)
    ref = cpu_set.__getitems__(list(range(len(paths))))
    return (images, labels, bad), raw, ref


def test_the_device_path_gives_the_workers_boxes_labels_and_pixels(tmp_path):
    """Same RNG state: the same crops and flips, every EXIF orientation applied as PIL does, pixels within 1
    (float resize rounded vs torch's uint8 kernel); what the device decoder is not given (CMYK, PNG) made
    by the worker exactly as the workers' path makes it; a truncated file skipped by both."""
    make_photo_like(tmp_path / "base.jpg", 90, 70, seed=3)
    base = Image.open(tmp_path / "base.jpg")
    paths = [_orientated(base.convert("RGB"), tmp_path / f"o{o}.jpg", o) for o in range(1, 9)]
    for k in range(6):
        make_photo_like(tmp_path / f"p{k}.jpg", 60 + 13 * k, 50 + 7 * k, seed=k)
        paths.append(str(tmp_path / f"p{k}.jpg").encode())
    base.convert("L").save(tmp_path / "gray.jpg", quality=90)
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    base.save(tmp_path / "rgb.png")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "p0.jpg").read_bytes()[:600])
    paths += [str(tmp_path / n).encode() for n in ("gray.jpg", "cmyk.jpg", "rgb.png", "trunc.jpg")]
    (images, labels, bad), raw, (ref, ref_labels, ref_bad) = _both(paths, 48, seed=1)

    assert bad == ref_bad == [len(paths) - 1]
    cmyk, png = len(paths) - 3, len(paths) - 2
    assert raw.index.tolist() == [i for i in range(len(paths) - 1) if i not in (cmyk, png)]
    assert raw.done.shape == (2, 48, 48, 3)
    assert raw.boxes[:, 5].tolist()[:8] == list(range(1, 9)) and raw.boxes[:, 4].unique().tolist() == [0, 1]
    order = raw.index.tolist() + [cmyk, png]  # the device batch: the decoded JPEGs first, then the worker's
    ref_of = {int(i): k for k, i in enumerate(ref_labels)}  # targets are the indexes here
    assert labels.tolist() == order
    assert images.shape == (len(order), 3, 48, 48) and images.dtype == torch.uint8
    assert images.permute(0, 2, 3, 1).is_contiguous()  # the loader's layout: channels_last NCHW
    for k, i in enumerate(order):
        diff = (images[k].int() - ref[ref_of[i]].int()).abs()
        assert diff.max() <= (1 if i in raw.index.tolist() else 0), (i, diff.max())
        assert diff.float().mean() < 0.5
    # decoded in chunks (here one image a chunk: the bound on a chunk's full-size pixels), the same batch
    one_by_one = device_decode.DeviceDecoder(data.preprocess_spec(48), "cpu", np.array(paths, dtype=np.bytes_))
    one_by_one.CHUNK_BYTES = 1
    again, again_labels = one_by_one(raw, torch.tensor(order), set())
    assert torch.equal(again, images) and torch.equal(again_labels, labels)


def test_a_worker_reads_each_file_once_whatever_decodes_it(tmp_path, monkeypatch):
    """What the device decoder is not given (PNG, CMYK) the worker decodes from the bytes it has read to
    look at the header: one read a file, as for the JPEGs it passes on (and no second look at a file that
    may have changed in between)."""
    make_photo_like(tmp_path / "p.jpg", 80, 60, seed=2)
    base = Image.open(tmp_path / "p.jpg")
    base.save(tmp_path / "rgb.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    paths = [str(tmp_path / n).encode() for n in ("p.jpg", "rgb.png", "cmyk.jpg")]
    opened, real_open = [], open

    def counting(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    ds = device_decode.JpegBatches(np.array(paths, dtype=np.bytes_), np.arange(3),
                                   data.TrainTransform(data.preprocess_spec(32)))
    monkeypatch.setattr("builtins.open", counting)
    raw, labels, bad = ds.__getitems__([0, 1, 2])
    monkeypatch.undo()
    assert bad == [] and raw.index.tolist() == [0] and raw.done.shape == (2, 32, 32, 3)
    assert sorted(opened) == sorted(p.decode() for p in paths)  # each once


def test_a_drafted_photo_keeps_the_cpu_boxes_and_pixel_statistics(tmp_path):
    """Photos >= 2x the crop: the workers' path decodes them DCT-scaled; the device decodes them whole and
    area-averages by the same scale, so boxes are identical and pixels close (not equal: IDCT scaling vs
    an average)."""
    for w, h in ((500, 375), (300, 700), (257, 129), (128, 300)):
        Image.new("RGB", (w, h)).save(tmp_path / "s.jpg")
        header = device_decode.device_header((tmp_path / "s.jpg").read_bytes(), 64)
        assert header[:2] == tuple(reversed(decode(str(tmp_path / "s.jpg"), 64).shape[1:])), (w, h)
    paths = []
    for k in range(24):
        make_photo_like(tmp_path / f"b{k}.jpg", 500, 375, seed=10 + k)
        paths.append(str(tmp_path / f"b{k}.jpg").encode())
    (images, labels, _), raw, (ref, ref_labels, _) = _both(paths, 64, seed=2)
    assert raw.boxes[:, 6].unique().tolist() == [4] and raw.boxes[:, 7].unique().tolist() == [500 * 375]  # DCT 1/4
    assert torch.equal(labels, ref_labels)
    a, b = images.float(), ref.float()
    assert (a - b).abs().mean() < 3
    assert (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max() < 0.5
    ratio = a.std((0, 2, 3)) / b.std((0, 2, 3))
    assert ((ratio > 0.95) & (ratio < 1.05)).all(), ratio


def test_a_stream_the_device_refuses_is_decoded_on_the_host_and_a_broken_one_skipped_once(tmp_path, monkeypatch,
                                                                                          caplog):
    paths = []
    for k in range(4):
        make_photo_like(tmp_path / f"p{k}.jpg", 70, 50, seed=k)
        paths.append(str(tmp_path / f"p{k}.jpg").encode())
    broken = bytearray((tmp_path / "p2.jpg").read_bytes())  # a bogus Huffman table: the header reads, no decoder does
    at = broken.index(b"\xff\xc4")
    broken[at + 5:at + 21] = b"\xff" * 16
    (tmp_path / "p2.jpg").write_bytes(broken)
    refused = {(tmp_path / "p1.jpg").read_bytes()}
    real = device_decode.decode_jpeg

    def picky(streams, **kw):  # the device decoder refusing a stream the host reads (as nvJPEG may a variant)
        for s in streams if isinstance(streams, list) else [streams]:
            if bytes(s.numpy()) in refused:
                raise RuntimeError("Error while decoding JPEG images")
        return real(streams, **kw)

    monkeypatch.setattr(device_decode, "decode_jpeg", picky)
    arr = np.array(paths, dtype=np.bytes_)
    spec = data.preprocess_spec(32)
    ds = device_decode.JpegBatches(arr, np.arange(4), data.TrainTransform(spec))
    random.seed(0)
    raw, labels, bad = ds.__getitems__([0, 1, 2, 3])
    assert bad == [] and raw.index.tolist() == [0, 1, 2, 3]  # p2's header is fine: it goes to the device
    only = ds.__getitems__([2])
    random.seed(0)
    ref, _, _ = data.ImageDataset(arr[[0, 1]], np.arange(2), data.TrainTransform(spec)).__getitems__([0, 1])
    (tmp_path / "p1.jpg").unlink()  # gone after the worker's read: the host decodes the bytes it was given
    dec = device_decode.DeviceDecoder(spec, "cpu", arr)
    skipped = set()
    with caplog.at_level(logging.WARNING, logger="localsage.container.train"):
        images, got = dec(raw, labels, skipped)
        dec(raw, labels, skipped)
    assert got.tolist() == [0, 1, 3] and images.shape == (3, 3, 32, 32) and skipped == {2}
    assert [r.getMessage() for r in caplog.records] == [f"skipped unreadable image {tmp_path / 'p2.jpg'}"]
    assert (images[:2].int() - ref.int()).abs().max() <= 1  # p1 from the host: the same crop
    with pytest.raises(data.DataError, match="p2.jpg"):
        device_decode.DeviceDecoder(spec, "cpu", arr, strict=True)(raw, labels, set())
    # a batch with nothing left is skipped, or in DDP becomes the zero-weight stand-in; host_batches' own
    # stand-in (plain pixels) passes through
    stream = [(only[0], only[1], 1.0),
              (torch.zeros((2, 3, 32, 32), dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 0.0),
              (raw, labels, 1.0)]
    out = list(feed.to_device(stream, Normalize(), torch.device("cpu"), dec, skipped))
    assert [(x.shape[0], w) for x, _, w in out] == [(2, 0.0), (3, 1.0)]
    out = list(feed.to_device(stream, Normalize(), torch.device("cpu"), dec, skipped, stand_in=True))
    assert [(x.shape[0], w) for x, _, w in out] == [(2, 0.0), (2, 0.0), (3, 1.0)]


@pytest.mark.integration
def test_a_job_decoding_on_the_device_trains_and_counts_unreadable_files(tmp_path, jobs_dir):
    root = make_demo_data(tmp_path / "c", classes=2, per_class=10, size=40, corrupt=4)
    hp = {**{k: v for k, v in TINY_HP.items() if k != "max-steps"}, "decode-on": "device"}
    record = runner.train(root, hp, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Completed", record.get("FailureReason")
    assert record["Summary"]["skipped_by_split"]["train"] == 4
    log = Path(record["LogFile"]).read_text()
    assert "decode-on=device" in log and log.count("skipped unreadable image") == 4


@pytest.mark.integration
def test_a_file_only_the_device_decoder_finds_unreadable_fails_a_strict_job_naming_it(tmp_path, jobs_dir):
    """The device decoder runs in the feed thread (localsage.container.feed.in_thread): its strict-data error still
    ends the job, and the job's failure file names the file."""
    root = make_demo_data(tmp_path / "c", classes=2, per_class=10, size=40)
    victim = sorted((root / "train").rglob("*.jpg"))[3]
    broken = bytearray(victim.read_bytes())  # a bogus Huffman table: the worker's header parse passes it on
    at = broken.index(b"\xff\xc4")
    broken[at + 5:at + 21] = b"\xff" * 16
    victim.write_bytes(broken)
    hp = {**{k: v for k, v in TINY_HP.items() if k != "max-steps"}, "decode-on": "device", "strict-data": "true"}
    record = runner.train(root, hp, jobs_dir=jobs_dir, echo=False)
    assert record["TrainingJobStatus"] == "Failed"
    assert victim.name in record["FailureReason"], record["FailureReason"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu.py's machine)")
def test_nvjpeg_batches_have_the_cpu_paths_boxes_and_statistics(tmp_path):
    make_photo_like(tmp_path / "base.jpg", 300, 200, seed=1)
    base = Image.open(tmp_path / "base.jpg")
    paths = [_orientated(base.convert("RGB"), tmp_path / f"o{o}.jpg", o) for o in range(1, 9)]
    for k in range(24):
        make_photo_like(tmp_path / f"b{k}.jpg", 500, 375, seed=10 + k)
        paths.append(str(tmp_path / f"b{k}.jpg").encode())
    arr = np.array(paths, dtype=np.bytes_)
    spec = data.preprocess_spec(64)
    ds = device_decode.JpegBatches(arr, np.arange(len(arr)), data.TrainTransform(spec), draft_size=64)
    random.seed(0)
    raw, labels, _ = ds.__getitems__(list(range(len(arr))))
    on_gpu, gpu_labels = device_decode.DeviceDecoder(spec, "cuda", arr)(raw, labels, set())
    on_cpu, cpu_labels = device_decode.DeviceDecoder(spec, "cpu", arr)(raw, labels, set())
    assert on_gpu.is_cuda and torch.equal(gpu_labels.cpu(), cpu_labels)
    a, b = on_gpu.cpu().float(), on_cpu.float()
    assert (a - b).abs().mean() < 3  # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's a little
    assert (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max() < 1


def test_a_torchvision_that_cannot_decode_on_the_device_fails_the_job_before_the_first_step(monkeypatch):
    device_decode.check_device("cpu")  # torchvision's CPU decoder: fine

    def no_nvjpeg(*args, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    monkeypatch.setattr(device_decode, "decode_jpeg", no_nvjpeg)
    with pytest.raises(HyperparameterError, match="decode-on=device: .*nvJPEG support.*decode-on=workers"):
        device_decode.check_device("cpu")
