"""localsage.container.shm: the loaders fitted to /dev/shm (made-up free space), and the reason a job gives when it
runs out."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from localsage.container import shm

MiB = 2**20
BATCH = shm.batch_bytes(64, 224)  # the defaults: batch-size 64, image-size 224 (9.2 MiB)


def room(mib, total=None):
    return shm.Space(total=(total or mib) * MiB, free=mib * MiB, budget=mib * MiB)


def test_enough_shared_memory_keeps_the_asked_workers_and_prefetch():
    for space in (room(2048), None):  # docker/sagemaker-local backends' 2 GB; no /dev/shm to fit to
        plan = shm.plan_loaders(space, 2, 4, BATCH, BATCH)
        assert (plan.workers, plan.prefetch, plan.shrunk) == (2, 4, False)
    assert shm.plan_loaders(room(2048), 2, 4, BATCH, BATCH).need == 2 * 6 * BATCH + 10 * BATCH + shm.MARGIN


def test_dockers_64m_default_fits_one_worker_one_batch_ahead_at_224_px():
    plan = shm.plan_loaders(room(64), 2, 4, BATCH, BATCH)
    assert (plan.workers, plan.prefetch, plan.shrunk) == (1, 1, True)
    assert plan.need <= 64 * MiB < plan.asked[2]
    assert shm.plan_loaders(room(64), 2, 4, shm.batch_bytes(64, 64), shm.batch_bytes(64, 64)).shrunk is False


def test_fewer_batches_ahead_first_then_fewer_workers_then_none():
    def fitted(budget_bytes, workers=4, prefetch=4, ring=True):
        space = shm.Space(budget_bytes, budget_bytes, budget_bytes)
        plan = shm.plan_loaders(space, workers, prefetch, BATCH, BATCH, ring)
        assert plan.need <= budget_bytes
        return plan.workers, plan.prefetch

    assert fitted(shm.need(4, 2, BATCH, BATCH)) == (4, 2)
    assert fitted(shm.need(4, 1, BATCH, BATCH)) == (4, 1)
    assert fitted(shm.need(4, 1, BATCH, BATCH) - 1) == (3, 1)
    assert fitted(shm.need(2, 1, BATCH, BATCH) - 1, workers=2) == (1, 2)  # a worker less: deeper again where it fits
    assert fitted(shm.need(1, 1, BATCH, BATCH)) == (1, 1)
    assert fitted(shm.need(1, 1, BATCH, BATCH) - 1) == (0, 0)  # nothing goes through /dev/shm
    assert shm.need(0, 0, BATCH, BATCH) == 0
    # without a ring the train loader's in-flight batches are one segment each, as the eval loaders'
    assert shm.need(2, 4, BATCH, BATCH, ring=False) == 2 * 10 * BATCH + shm.MARGIN
    assert fitted(shm.need(2, 3, BATCH, BATCH, ring=False), 2, 4, ring=False) == (2, 3)
    assert shm.plan_loaders(room(1), 0, 4, BATCH, BATCH).shrunk is False  # workers=0 asked: nothing to fit


def test_the_ring_and_the_plan_agree_on_slots():
    assert shm.ring_slots(4) == 4 + shm.HELD and shm.ring_slots(1) == 1 + shm.HELD
    assert shm.need(3, 2, BATCH, 0) == 3 * shm.ring_slots(2) * BATCH + shm.MARGIN


def test_space_shares_dev_shm_among_a_hosts_processes_and_sets_aside_what_else_writes_there(monkeypatch):
    def statvfs(free_blocks, blocks=2048):
        return lambda path: SimpleNamespace(f_blocks=blocks, f_bavail=free_blocks, f_frsize=MiB)

    monkeypatch.setattr(shm.os, "statvfs", statvfs(2048))
    assert shm.space() == shm.Space(2048 * MiB, 2048 * MiB, 2048 * MiB)
    assert shm.space(processes=4).budget == 512 * MiB
    assert shm.space(processes=4, reserved=100 * MiB).budget == 412 * MiB
    monkeypatch.setattr(shm.os, "statvfs", statvfs(300))  # a rank that plans after the others made their rings
    assert shm.space(processes=4).budget == 300 * MiB
    assert shm.space(reserved=400 * MiB).budget == 0

    def missing(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(shm.os, "statvfs", missing)
    assert shm.space() is None


def test_the_shrink_message_says_what_was_given_up_and_names_every_fix():
    text = shm.plan_loaders(room(64), 2, 4, BATCH, BATCH).describe()
    assert "/dev/shm is small (64 MiB" in text and "2 workers x 4 batches ahead" in text
    assert "1 worker x 1 batch ahead" in text
    for fix in ("docker run --shm-size=2g", "local: {container_config: {shm_size: 2g}}", "~/.sagemaker/config.yaml",
                "default-shm-size", "/etc/docker/daemon.json"):
        assert fix in text
    assert "no workers" in shm.plan_loaders(room(8), 2, 4, BATCH, BATCH).describe()


TORCH_FALLOCATE = ("unable to allocate shared memory(shm) for file </torch_6331_1880137483_0>: "
                   "No space left on device (28)")


@pytest.mark.parametrize("exc", [
    RuntimeError(TORCH_FALLOCATE),  # the ring or a segment made in the training process
    RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                 '  File "x.py", line 1, in f\nRuntimeError: ' + TORCH_FALLOCATE),  # made in a worker
    RuntimeError("DataLoader worker (pid 77) is killed by signal: Bus error. It is possible that dataloader's "
                 "workers are out of shared memory. Please try to raise your shared memory limit."),
    RuntimeError("unable to write to file </torch_12_34_5>: No space left on device (28)"),
    OSError(28, "No space left on device: '/dev/shm/sem.mp-x'"),
])
def test_running_out_of_dev_shm_gives_a_reason_that_says_so_and_names_the_fix(exc):
    reason = shm.exhaustion_reason(exc)
    assert reason.startswith("SharedMemoryError: /dev/shm")
    assert "docker run --shm-size=2g" in reason and "shm_size: 2g" in reason and "default-shm-size" in reason
    wrapped = ValueError("while feeding")
    wrapped.__cause__ = exc
    assert shm.exhaustion_reason(wrapped) == reason


def test_other_errors_are_not_blamed_on_dev_shm():
    for exc in (OSError(28, "No space left on device: '/opt/ml/model/model.pth'"), RuntimeError("CUDA out of memory"),
                ValueError("bad")):
        assert shm.exhaustion_reason(exc) is None


def test_the_trainers_failure_reason_for_a_shm_error_is_the_shm_reason():
    from localsage.container import train

    try:
        raise RuntimeError(TORCH_FALLOCATE)
    except RuntimeError as exc:
        assert train.failure_reason(exc) == shm.exhaustion_reason(exc)
    assert train.failure_reason(RuntimeError("other")).startswith("RuntimeError: other")


def test_load_data_fits_the_loaders_to_a_small_dev_shm_and_logs_it_once(tmp_path, monkeypatch, caplog):
    import torch

    from localsage.container import data, feed
    from localsage.container.demo_images import make_demo_data
    from localsage.container.recipe import Ranks
    from localsage.core import hyperparameters

    root = make_demo_data(tmp_path / "d", classes=2, per_class=6, size=32)
    indexed, folders = data.load_splits({s: root / s for s in ("train", "valid", "test")})
    hp = hyperparameters.parse({"workers": "2", "data-cache": "off"})  # batch 64 at 224 px: the defaults
    ranks = Ranks(0, 1, 0, torch.device("cpu"), None)
    monkeypatch.setattr(shm, "space", lambda processes=1, reserved=0: room(64))
    with caplog.at_level(logging.WARNING, logger="localsage.container.train"):
        d = feed.load_data(indexed, folders, hp, ranks)
    assert d.workers == 1
    train_loader = d.loaders["train"]
    assert train_loader.num_workers == 1 and train_loader.prefetch_factor == 1
    assert d.datasets["train"].ring.slots == shm.ring_slots(1) and d.datasets["train"].ring.workers == 1
    assert all(d.loaders[s].num_workers == 1 and d.loaders[s].prefetch_factor == 1 for s in ("valid", "test"))
    assert [r.message for r in caplog.records].count(shm.plan_loaders(room(64), 2, 4, shm.batch_bytes(64, 224),
                                                                       shm.batch_bytes(64, 224)).describe()) == 1
    caplog.clear()
    monkeypatch.setattr(shm, "space", lambda processes=1, reserved=0: room(2048))
    with caplog.at_level(logging.WARNING, logger="localsage.container.train"):
        d = feed.load_data(indexed, folders, hp, ranks)
    assert d.workers == 2 and d.loaders["train"].prefetch_factor == data.PREFETCH
    assert d.datasets["train"].ring.slots == data.PREFETCH + 2
    assert not [r for r in caplog.records if "/dev/shm" in r.message]


def test_a_decoded_image_cache_on_dev_shm_is_set_aside_from_the_loaders_budget(tmp_path, monkeypatch):
    import torch

    from localsage.container import data, feed
    from localsage.container.data_cache import cache_estimate
    from localsage.container.demo_images import make_demo_data
    from localsage.container.recipe import Ranks
    from localsage.core import hyperparameters

    if not shm.on_shm(shm.SHM):
        pytest.skip("no /dev/shm here")
    root = make_demo_data(tmp_path / "d", classes=2, per_class=6, size=32)
    indexed, folders = data.load_splits({s: root / s for s in ("train", "valid", "test")})
    asked = []
    monkeypatch.setattr(shm, "space", lambda processes=1, reserved=0: asked.append(reserved) or room(2048))
    hp = hyperparameters.parse({"workers": "1", "data-cache": "decoded"})
    ranks = Ranks(0, 1, 0, torch.device("cpu"), None)
    for folder, on in ((tmp_path / "cache", False), (Path(shm.SHM) / f"localsage-test-cache-{os.getpid()}", True)):
        monkeypatch.setenv("LOCALSAGE_CACHE_DIR", str(folder))
        try:
            feed.load_data(indexed, folders, hp, ranks)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        assert shm.on_shm(folder.parent) is on
        assert asked.pop() == (sum(cache_estimate(idx[0]) for idx in indexed.values()) if on else 0)
