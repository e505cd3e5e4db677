"""Data-parallel setup from the SageMaker contract (resourceconfig.json: hosts, current_host).

One process per GPU (or one per host on CPU). The first host is the rendezvous point; ranks are
ordered host by host: rank = host_index * procs_per_host + local_rank.

    rank, world_size, local_rank = distributed.setup(c.hosts, c.current_host, c.num_gpus)

is a no-op returning (0, 1, 0) for one host started without a launcher, so single-process training
takes the same code path. Several processes on one host (one per GPU, or as many as
sagemaker_mpi_num_of_processes_per_host says): `launch_local` starts them (as torchrun would), each
with LOCAL_RANK and LOCAL_WORLD_SIZE set, and forwards SIGTERM/SIGINT to them.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from typing import Sequence

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500  # MASTER_PORT overrides
PORT_ENV = "MASTER_PORT"


def world_layout(hosts: Sequence[str], current_host: str, procs_per_host: int = 1,
                 local_rank: int = 0) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) for this process; pure arithmetic, no side effects."""
    hosts = list(hosts) or [current_host]
    if current_host not in hosts:
        raise ValueError(f"current_host {current_host!r} is not in hosts {hosts}")
    per_host = max(int(procs_per_host), 1)
    if not 0 <= local_rank < per_host:
        raise ValueError(f"local_rank {local_rank} out of range for {per_host} process(es) per host")
    return hosts.index(current_host) * per_host + local_rank, len(hosts) * per_host, local_rank


def setup(hosts: Sequence[str], current_host: str, num_gpus: int = 0, *, local_rank: int | None = None,
          interface: str | None = None, port: int | None = None, timeout_s: float = 600) -> tuple[int, int, int]:
    """Join the process group described by the contract; returns (rank, world_size, local_rank).

    Processes per host come from $LOCAL_WORLD_SIZE (set by `launch_local` or torchrun), else 1: a
    host started without a launcher is one process (on GPU 0), so the rendezvous never waits for
    ranks nobody started. local_rank defaults to $LOCAL_RANK or 0. `interface` is resourceconfig's
    network_interface_name (used for gloo/nccl sockets unless already set in the environment).
    """
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    rank, world_size, local_rank = world_layout(hosts, current_host, per_host, local_rank)
    use_cuda = num_gpus > local_rank and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return rank, world_size, local_rank
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank

    # one host: its own processes meet on loopback (its name, e.g. algo-1, need not resolve)
    master = list(hosts)[0] if len(hosts) > 1 else os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(port or os.environ.get(PORT_ENV, DEFAULT_PORT))
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), WORLD_SIZE=str(world_size),
                      RANK=str(rank), LOCAL_RANK=str(local_rank))
    backend = "nccl" if use_cuda else "gloo"
    print(f"distributed: host={current_host} rank={rank} world_size={world_size} local_rank={local_rank} "
          f"backend={backend} master={master}:{port}", flush=True)
    dist.init_process_group(backend, init_method=f"tcp://{master}:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    print(f"distributed: rank {rank}/{world_size} joined", flush=True)
    return rank, world_size, local_rank


def setup_from_contract(c, local_rank: int | None = None) -> tuple[int, int, int]:
    """`setup` with the fields of a localsage.core.contract.Contract."""
    rc = getattr(c, "resource_config", None) or {}
    return setup(c.hosts, c.current_host, c.num_gpus, local_rank=local_rank,
                 interface=rc.get("network_interface_name"))


def launch_local(nprocs: int, command: Sequence[str], single_host: bool = True, env: dict | None = None) -> int:
    """Run `command` nprocs times on this host (LOCAL_RANK 0..n-1, LOCAL_WORLD_SIZE n), as torchrun does;
    SIGTERM/SIGINT are forwarded to every process, each dies with this one (parent-death signal).
    Returns 0 when all succeed, else the first non-zero exit code (143 when stopped)."""
    from localsage.core.procs import die_with_parent, free_port

    base = {**os.environ, **(env or {}), "LOCAL_WORLD_SIZE": str(nprocs)}
    if single_host and "MASTER_PORT" not in base:
        base["MASTER_PORT"] = str(free_port())
    children = []

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"distributed: starting {nprocs} processes on this host", flush=True)
        for local_rank in range(nprocs):
            children.append(subprocess.Popen(list(command), env={**base, "LOCAL_RANK": str(local_rank)},
                                             preexec_fn=die_with_parent(signal.SIGTERM)))
        first_failure = None
        while any(child.poll() is None for child in children):
            for child in children:
                if first_failure is None and child.poll() not in (None, 0):
                    first_failure = child.returncode if child.returncode >= 0 else 128 - child.returncode
                    if first_failure != 143:  # a crashed rank: the others would wait for it in a collective
                        forward(signal.SIGTERM, None)
            time.sleep(0.2)
        codes = [c if c >= 0 else 128 - c for c in (child.returncode for child in children)]  # -15 -> 143
        if first_failure is None:
            first_failure = next((c for c in codes if c != 0), 0)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return first_failure


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum a few numbers (loss sums, correct counts, sample counts) over all ranks.

    Identity when not distributed. With nccl, pass the rank's cuda device.
    """
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_state(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank the parameters and buffers of rank `src` (e.g. the best weights only it kept)."""
    if not active():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src)


def shard(dataset, rank: int, world_size: int):
    """This rank's disjoint share of an evaluation dataset (no padding, so summed counts are exact)."""
    if world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))


def barrier() -> None:
    if active():
        dist.barrier()


def cleanup() -> None:
    if active():
        dist.destroy_process_group()
