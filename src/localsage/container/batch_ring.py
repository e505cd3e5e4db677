"""Shared-memory batch slots, reused: how the train loader's workers hand uint8 batches to the main process.

Why: a fresh shared-memory segment for every batch (what torch's collation does, and what
`ImageDataset.__getitems__` did) costs the worker an fallocate and a page fault per page on first write,
and the main process as much again to map it: a large share of the per-image cost with the decoded-image
cache warm (the figures: docs/performance.md, "Figures from the code").

How: `Ring(workers, slots, shape)` is one shared uint8 tensor of `workers * slots` batch slots plus
one shared in-use flag a slot, made in the main process before the workers start (forked workers
inherit it; spawned ones get it once with the dataset). Worker `w` writes each batch into the next of
its own slots that is free, marks it in use and returns a `RingBatch` (a few bytes to pickle: no
file descriptor, no new segment). When the DataLoader's queue unpickles it in the main process, the
training loop gets the slot itself, as a tensor over a numpy view of it, and the flag is cleared when
the last tensor on that memory is gone (a `weakref.finalize` on the view, which torch holds for as
long as any tensor, view or storage refers to it). So nothing is copied, a batch may be kept as long
as its holder likes, and a kept batch is never written over (copying the slot out instead costs the
main process a read of memory another core wrote and the page faults of a fresh buffer). A worker
whose slots are all still held (a consumer that keeps its batches) falls back to a one-off shared
segment for that batch, so nothing waits on a slot.

Size: the whole ring is reserved in /dev/shm when it is made (torch fallocates it): make_loader's
caller fits workers and slots to the room there (localsage.container.shm.plan_loaders).
"""
from __future__ import annotations

import itertools
import os
import weakref

import numpy as np
import torch

_RINGS = weakref.WeakValueDictionary()  # ring id -> Ring, in every process that made or inherited one
_ids = itertools.count()


class Ring:
    def __init__(self, workers: int, slots: int, shape: tuple):
        self.id = next(_ids)  # rings are made in the main process only, which is where batches are received
        self.workers, self.slots, self.shape = workers, slots, tuple(shape)  # one slot: (batch, h, w, c)
        self.data = torch.empty((workers * slots, *self.shape), dtype=torch.uint8).share_memory_()
        self.busy = torch.zeros(workers * slots, dtype=torch.int32).share_memory_()
        self._next = 0  # this process's (worker's) next slot, counted from its first
        _RINGS[self.id] = self

    def __setstate__(self, state):  # a spawned worker: register the ring it was sent
        self.__dict__.update(state)
        _RINGS[self.id] = self

    def take(self, worker: int, count: int):
        """(slot index, NHWC uint8 view of `count` images) for the worker's next batch: its next own slot
        that nobody holds. None when the batch does not fit, the worker is not one the ring was made
        for, or every one of its slots is held."""
        if count > self.shape[0] or not 0 <= worker < self.workers:
            return None
        for k in range(self.slots):
            slot = worker * self.slots + (self._next + k) % self.slots
            if not int(self.busy[slot]):
                self._next += k + 1
                return slot, self.data[slot, :count]
        return None

    def send(self, slot: int, count: int, labels, bad) -> "RingBatch":
        self.busy[slot] = 1
        return RingBatch(self.id, slot, count, np.asarray(labels, dtype=np.int64), list(bad))

    def release(self, slot: int, pid: int) -> None:
        """The slot's batch is gone in process `pid` (its receiver): the worker may write the slot again.
        A forked child that inherited the view and drops it frees nothing."""
        if os.getpid() == pid:
            self.busy[slot] = 0


class RingBatch:
    """A batch in a ring slot; unpickled, it is the loader's (images, labels, bad) tuple."""

    def __init__(self, ring_id, slot, count, labels, bad):
        self.args = (ring_id, slot, count, labels, bad)

    def __reduce__(self):
        return receive, self.args


def receive(ring_id, slot, count, labels, bad):
    """In the main process: (NCHW view of the slot's NHWC images, labels, bad). The slot is freed when
    the last tensor on its memory is gone."""
    ring = _RINGS[ring_id]
    view = ring.data[slot, :count].numpy()  # a numpy array of its own: torch keeps it alive with the tensor
    weakref.finalize(view, ring.release, slot, os.getpid())
    return torch.from_numpy(view).permute(0, 3, 1, 2), torch.from_numpy(labels), bad
