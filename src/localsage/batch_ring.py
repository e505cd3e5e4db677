"""Shared-memory batch slots, reused: how the train loader's workers hand uint8 batches to the main process.

Why: a fresh shared-memory segment for every batch (what torch's collation does, and what
`ImageDataset.__getitems__` did) costs the worker ~6 ms a 32x224x224 batch on this project's 2-core
VM (torch fallocates the segment, then every page faults in on first write: 2.3 + 3.8 ms, against
0.2 ms for reused private memory) and the main process as much again to map it: about a fifth of the
worker's whole per-image cost with the decoded-image cache warm.

How: `Ring(workers, slots, shape)` is one shared uint8 tensor of `workers * slots` batch slots plus
one shared in-use flag a slot, made in the main process before the workers start (forked workers
inherit it; spawned ones get it once with the dataset). Worker `w` writes batch after batch into its
own slots in turn, marks the slot in use and returns a `RingBatch` (a few bytes to pickle: no file
descriptor, no new segment). When the DataLoader's queue unpickles it in the main process, the slot
is copied into an ordinary private tensor (numpy's single-threaded memcpy: ~0.3 ms, and no OpenMP
team woken, see data.Normalize) and the flag cleared. So the training loop gets plain tensors it may
keep as long as it likes, and a slot is free as soon as its batch has been received. A worker that
finds its next slot still in use (its batch sent but not yet received) waits for it; after
`WAIT_S` it falls back to a one-off shared segment, so nothing can deadlock on a slot.
"""
from __future__ import annotations

import itertools
import time
import weakref

import numpy as np
import torch

WAIT_S = 10.0
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
        """(slot index, NHWC uint8 view of `count` images) for the worker's next batch, or None when
        the batch does not fit, the worker is not one the ring was made for, or the slot stayed in use
        for WAIT_S."""
        if count > self.shape[0] or not 0 <= worker < self.workers:
            return None
        slot = worker * self.slots + self._next % self.slots
        self._next += 1
        deadline = time.monotonic() + WAIT_S
        while int(self.busy[slot]):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.0005)
        return slot, self.data[slot, :count]

    def send(self, slot: int, count: int, labels, bad) -> "RingBatch":
        self.busy[slot] = 1
        return RingBatch(self.id, slot, count, np.asarray(labels, dtype=np.int64), list(bad))


class RingBatch:
    """A batch in a ring slot; unpickled, it is the loader's (images, labels, bad) tuple."""

    def __init__(self, ring_id, slot, count, labels, bad):
        self.args = (ring_id, slot, count, labels, bad)

    def __reduce__(self):
        return receive, self.args


def receive(ring_id, slot, count, labels, bad):
    """In the main process: copy the slot out, free it, and return (NCHW view of NHWC images, labels, bad)."""
    ring = _RINGS[ring_id]
    out = np.empty((count, *ring.shape[1:]), dtype=np.uint8)
    np.copyto(out, ring.data[slot, :count].numpy())
    ring.busy[slot] = 0
    return torch.from_numpy(out).permute(0, 3, 1, 2), torch.from_numpy(labels), bad
