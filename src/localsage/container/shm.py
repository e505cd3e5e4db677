"""Shared memory (/dev/shm): how much of it the loaders may hold, and the reason a job gives when it runs out.

The DataLoader's workers hand batches to the training process through /dev/shm: the train loader's
reused batch slots (localsage.container.batch_ring: `ring_slots(prefetch)` a worker, allocated once for the
run), the eval loaders' one segment a batch, and small tensors (labels, the slots' in-use flags).
torch reserves every segment's pages when it makes it (posix_fallocate), so a /dev/shm that is too
small fails there with "unable to allocate shared memory(shm) ... No space left on device".

Docker gives a container 64 MiB of /dev/shm unless told otherwise, and neither SageMaker SDK's local
mode asks for more: at the default 224-px crop and batch 64 one batch is 9.2 MiB, and two workers'
ring alone is 110 MiB. `plan_loaders` fits the loaders to the space there is (fewer batches ahead a
worker, then fewer workers, then none: the training process loads its batches itself and nothing goes
through /dev/shm), and `LoaderPlan.describe` says what it gave up and how to get it back (`FIX`). A
job that runs out all the same fails with `exhaustion_reason`, which names /dev/shm and the same fix.

Torch-free: the plan is arithmetic on byte counts, unit-tested with made-up free space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SHM = "/dev/shm"  # where torch's shared-memory segments live on Linux (shm_open)
MiB = 2**20  # sizes are shown in MiB, the unit of `docker run --shm-size=64m`

# Besides the batches its workers have in flight, the training loop may hold two: the one it steps on and
# the one just received (or, in the ring, one spare). A worker's ring has this many slots more than its
# in-flight batches; the eval loaders' one-off segments are this many more than all workers' in flight.
HELD = 2
# Room for the small shared tensors and files no batch accounts for: each eval batch's labels (a page
# each), the ring's in-use flags, the multiprocessing queues' semaphores.
MARGIN = 4 * 2**20

FIX = ("give the container a larger /dev/shm: `docker run --shm-size=2g`; SageMaker SDK v2 local mode: "
       "`local: {container_config: {shm_size: 2g}}` in ~/.sagemaker/config.yaml; SDK v3 (ModelTrainer) has no "
       "setting for it: docker's daemon-wide `\"default-shm-size\": \"2G\"` in /etc/docker/daemon.json "
       "(then restart docker)")


def ring_slots(prefetch: int) -> int:
    """A worker's batch slots in the train loader's ring: its `prefetch` batches in flight + HELD."""
    return prefetch + HELD


def page_up(n: int) -> int:
    """Bytes a segment of n bytes takes in /dev/shm (whole pages)."""
    page = 4096
    return -(-n // page) * page


def batch_bytes(batch_size: int, image_size: int) -> int:
    """One uint8 RGB batch of image_size x image_size crops, as a shared-memory segment."""
    return page_up(batch_size * image_size * image_size * 3)


@dataclass(frozen=True)
class Space:
    total: int  # the filesystem's size
    free: int   # free now
    budget: int  # what this process may use (see `space`)


def space(processes: int = 1, reserved: int = 0, path: str = SHM) -> Space | None:
    """/dev/shm's size and free space (os.statvfs), and this process's budget in it: the free space,
    at most an equal share of the whole among the `processes` training processes of this host (each
    plans its own loaders, some after others have made their rings), less `reserved` bytes something
    else will still write there (the decoded-image cache, when its folder is on /dev/shm).
    None where there is no such filesystem."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return Space(total, free, max(0, min(free, total // max(1, processes)) - reserved))


def on_shm(path, shm: str = SHM) -> bool:
    """Whether `path` is on the /dev/shm filesystem (what is written there takes the loaders' room)."""
    try:
        return os.stat(path).st_dev == os.stat(shm).st_dev
    except OSError:
        return False


def need(workers: int, prefetch: int, train_batch: int, eval_batch: int, ring: bool = True) -> int:
    """Bytes of /dev/shm the loaders hold at most with `workers` workers, each `prefetch` batches ahead:
    the train loader's ring (`ring_slots` a worker; without a ring, one segment a batch as the eval
    loaders), one eval loader's segments (the valid and test loaders run one at a time, the train
    ring stays allocated meanwhile) and MARGIN. Nothing without workers."""
    if workers <= 0:
        return 0
    in_flight = workers * prefetch + HELD
    train = workers * ring_slots(prefetch) * train_batch if ring else in_flight * train_batch
    return train + in_flight * eval_batch + MARGIN


@dataclass(frozen=True)
class LoaderPlan:
    workers: int  # DataLoader workers of every loader
    prefetch: int  # batches a worker has in flight (torch's prefetch_factor; 0 without workers)
    need: int  # bytes of /dev/shm this plan holds at most
    asked: tuple  # (workers, prefetch, need) asked for
    space: Space | None  # what it was fitted to (None: not fitted)
    batch: int  # bytes of one train batch

    @property
    def shrunk(self) -> bool:
        return (self.workers, self.prefetch) != self.asked[:2]

    def describe(self) -> str:
        """One log line: what was given up for lack of /dev/shm, and the fix."""
        w, p, asked_need = self.asked
        got = (f"{_loaders(self.workers, self.prefetch)} ({self.need / MiB:.0f} MiB)" if self.workers else
               "no workers (the training process loads every batch itself)")
        s = self.space
        return (f"{SHM} is small ({s.total / MiB:.0f} MiB, {s.free / MiB:.0f} MiB free, {s.budget / MiB:.0f} MiB for "
                f"this process): the loaders' shared batches ({self.batch / MiB:.1f} MiB each) need "
                f"{asked_need / MiB:.0f} MiB with {_loaders(w, p)}; using {got}, which is slower. "
                f"For full speed, {FIX}")


def _loaders(workers: int, prefetch: int) -> str:
    return f"{workers} worker{'s' * (workers != 1)} x {prefetch} batch{'es' * (prefetch != 1)} ahead"


def plan_loaders(space: Space | None, workers: int, prefetch: int, train_batch: int, eval_batch: int,
                 ring: bool = True) -> LoaderPlan:
    """The loaders' (workers, prefetch) that fit this process's budget of /dev/shm (`need` <= budget).

    The asked pair when it fits (or when `space` is None: nothing to fit to). Otherwise, for each
    worker count from the asked one down to 1, the deepest prefetch from the asked one down to 1 that
    fits: a worker less costs more speed than a batch less ahead. Nothing fits: no workers (no
    shared memory at all). `ring`: whether the train loader uses batch_ring (see `need`)."""
    def cost(w, p):
        return need(w, p, train_batch, eval_batch, ring)

    asked = (workers, prefetch, cost(workers, prefetch))
    w, p = workers, prefetch
    if space is not None and workers > 0:
        w, p = next(((w, p) for w in range(workers, 0, -1) for p in range(prefetch, 0, -1)
                     if cost(w, p) <= space.budget), (0, 0))
    return LoaderPlan(w, p, cost(w, p), asked, space, train_batch)


# ------------------------------------------------------------------ running out all the same

_SIGNS = ("unable to allocate shared memory", "out of shared memory", "killed by signal: bus error")


def _texts(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:  # the error, then what caused it
        seen.add(id(exc))
        yield str(exc)
        exc = exc.__cause__ or exc.__context__


def _sign(line: str) -> bool:
    low = line.lower()
    return any(s in low for s in _SIGNS) or (
        "no space left on device" in low and (SHM in low or "</torch_" in low or "shared memory" in low))


def exhaustion_reason(exc: BaseException) -> str | None:
    """The failure reason for an error that is /dev/shm running out (torch's "unable to allocate shared
    memory", "No space left on device" on a shared-memory segment, a DataLoader worker killed by a bus
    error), naming /dev/shm and the fix; None for any other error."""
    for text in _texts(exc):
        lines = [line.strip() for line in text.splitlines() if _sign(line)]
        if lines:
            s = space()
            size = f" ({s.total / MiB:.0f} MiB)" if s else ""
            return (f"SharedMemoryError: {SHM}{size} ran out of space: the DataLoader's workers hand batches to "
                    f"the training process through it. To fix it, {FIX}; or lower workers, batch-size or "
                    f"image-size. (torch: {lines[-1][:300]})")
    return None
