"""The `train` entrypoint: contract -> hyperparameters -> data -> model -> loop -> export.

Read it in torchvision's order (references/classification/train.py): `train_one_epoch`, `evaluate`,
then `train` (the body of main: set-up, resume, the epoch loop, export) and `main` (the process:
arguments, signals, one process per GPU, the failure file). State lives in small dataclasses:
`Ranks` (who am I), `Data` (datasets and loaders), `Parts` (model, loss, optimizer, schedule),
`Progress` (what a checkpoint carries).

Runs the same as a plain process (SAGEMAKER_BASE_DIR pointing at a job folder), in a container
(`docker run IMAGE train`, /opt/ml mounted), under SageMaker local mode, or on SageMaker.
Any error before or during training: a one-paragraph reason in output/failure, exit code 1.
SIGTERM (SageMaker's stop / spot signal): finish the current step, checkpoint, exit 143.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from localsage.container import checkpoint, data, debug_session, distributed, export, feed, model as model_mod, shm
from localsage.container.feed import Data, load_data
from localsage.container.normalize import IMAGENET_MEAN, IMAGENET_STD
from localsage.container.recipe import Parts, Ranks, build_model, build_parts, setup_ranks
from localsage.core import contract as contract_mod, files, metrics
from localsage.core.hyperparameters import HyperparameterError, parse, processes_per_host, split_reserved

log = logging.getLogger("localsage.container.train")
CHECKPOINT, BEST = checkpoint.CHECKPOINT, checkpoint.BEST
STOPPED_EXIT = 143


class Stop:
    """SIGTERM flag: the loop checks it after every step."""

    requested = False

    @classmethod
    def install(cls):
        def handler(signum, frame):
            cls.requested = True
            log.info("received signal %d: finishing the current step, then checkpointing", signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def setup_logging():
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s", force=True
    )


# ------------------------------------------------------------------ state


@dataclass
class Progress:
    """What a checkpoint carries besides the weights."""
    start_epoch: int = 1
    best: dict = field(default_factory=lambda: {"valid_loss": float("inf"), "epoch": 0})
    bad_epochs: int = 0
    history: list = field(default_factory=list)
    bad_files: dict = field(default_factory=dict)


# ------------------------------------------------------------------ the loop


def train_one_epoch(parts: Parts, d: Data, ranks: Ranks, progress: Progress, dbg, max_steps: int = 0,
                    source=None) -> dict:
    """One pass over the train loader (or `source`, its iterator already started: feed.start_train_epoch)."""
    parts.step_model.train()
    loss_sum, correct, total = *device_sums(ranks.device), 0
    bar = progress_bar(len(d.loaders["train"]), "train")
    t0 = time.time()
    dbg.mode("train")
    timer = dbg.timer
    for images, labels, weight in timer.wrap(feed.batches(d, "train", ranks, progress.bad_files, max_steps, source),
                                             "train"):
        with torch.autocast(ranks.device.type, dtype=ranks.amp, enabled=ranks.amp is not None):
            logits = parts.step_model(images)
            loss = parts.criterion(logits, labels)
            if not weight:  # a DDP stand-in step (see feed.host_batches)
                loss = loss * 0.0
        timer.mark("forward")
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        timer.mark("backward")
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        timer.mark("optimizer")
        n = labels.numel() if weight else 0
        if n:  # summed on the device: no step waits for the GPU to report its loss (read once, below)
            loss_sum += loss.detach().double() * n
            correct += (logits.argmax(1) == labels).sum()
        total += n
        bar.update(1)
        if ranks.world > 1:  # a stop seen by any rank stops all of them at the same step
            Stop.requested = distributed.all_reduce_sum([Stop.requested], ranks.device)[0] > 0
        if Stop.requested:
            break
    bar.close()
    loss_sum, correct = loss_sum.item(), correct.item()  # waits for the last step's kernels
    elapsed = time.time() - t0
    loss_sum, correct, total = distributed.all_reduce_sum([loss_sum, correct, total], ranks.device)
    return {"loss": loss_sum / max(1, total), "acc": correct / max(1, total), "images": total, "time": elapsed}


def device_sums(device):
    """A float64 loss sum and an int64 count, zero, on `device`."""
    return torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.int64, device=device)


@torch.inference_mode()
def evaluate(model: nn.Module, criterion: nn.Module, d: Data, split: str, ranks: Ranks, progress: Progress,
             dbg) -> dict:
    model.eval()
    loss_sum, correct, total = *device_sums(ranks.device), 0
    mode = "eval" if split == "valid" else "predict"
    dbg.mode(mode)
    for images, labels, _ in dbg.timer.wrap(feed.batches(d, split, ranks, progress.bad_files), mode):
        with torch.autocast(ranks.device.type, dtype=ranks.amp, enabled=ranks.amp is not None):
            logits = model(images)
        loss_sum += criterion(logits.float(), labels).double() * labels.numel()
        dbg.timer.mark("forward")
        correct += (logits.argmax(1) == labels).sum()
        total += labels.numel()
    loss_sum, correct = loss_sum.item(), correct.item()
    loss_sum, correct, total = distributed.all_reduce_sum([loss_sum, correct, total], ranks.device)
    return {"loss": loss_sum / max(1, total), "acc": correct / max(1, total)}


def eval_model(parts: Parts, ranks: Ranks) -> nn.Module:
    # DDP's forward is a collective; shards may differ by one batch, so evaluate the plain module
    return parts.model if ranks.world > 1 else parts.step_model


def record(contract, ranks: Ranks, values: dict):
    if ranks.rank != 0:  # metrics are global (all-reduced); the leader reports them
        return
    import json

    print(metrics.format_line(values), flush=True)
    contract.output_data_dir.mkdir(parents=True, exist_ok=True)
    files.append_line(contract.metrics_file, json.dumps(values))


# ------------------------------------------------------------------ main


def fit(contract, hp, ranks: Ranks, d: Data, parts: Parts, progress: Progress, dbg) -> bool:
    """The epoch loop; True when a stop signal ended it (checkpoint written)."""
    upcoming = None  # the next epoch's train batches, their workers started while this epoch validates
    for epoch in range(progress.start_epoch, hp["epochs"] + 1):
        t0 = time.time()
        source = upcoming if upcoming is not None else feed.start_train_epoch(d, epoch)
        # the schedule as the epoch starts: a stop mid-epoch saves it with the epoch counted as not
        # done, so schedule and epoch counter agree when the job resumes (OneCycleLR has a step budget)
        schedule_at_start = parts.scheduler.state_dict()
        tr = train_one_epoch(parts, d, ranks, progress, dbg, hp["max-steps"], source)
        if Stop.requested:
            # interrupted mid-epoch: keep the weights, count the epoch as not done
            log.info("stopped mid-epoch %d: it runs again on resume", epoch)
            if ranks.rank == 0:
                checkpoint.save(contract.checkpoint_dir / CHECKPOINT,
                                checkpoint.state(epoch - 1, parts, progress, schedule_at_start))
            return True
        # the next epoch's workers start on its first batches now, while this one validates and checkpoints
        upcoming = feed.start_train_epoch(d, epoch + 1) if epoch < hp["epochs"] else None
        va = evaluate(eval_model(parts, ranks), parts.eval_criterion, d, "valid", ranks, progress, dbg)
        values = {
            "epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "valid_loss": va["loss"],
            "valid_acc": va["acc"], "epoch_time": time.time() - t0,
            "images_per_sec": tr["images"] / max(tr["time"], 1e-9),
        }
        progress.history.append(values)
        if va["loss"] < progress.best["valid_loss"]:
            progress.best = {"valid_loss": va["loss"], "valid_acc": va["acc"], "epoch": epoch}
            progress.bad_epochs = 0
            if ranks.rank == 0:
                checkpoint.save(contract.checkpoint_dir / BEST, parts.model.state_dict())
        else:
            progress.bad_epochs += 1
        record(contract, ranks, values)
        if ranks.rank == 0:
            checkpoint.save(contract.checkpoint_dir / CHECKPOINT, checkpoint.state(epoch, parts, progress))
        if Stop.requested:
            return True
        if hp["patience"] and progress.bad_epochs >= hp["patience"]:
            log.info("early stopping: valid_loss did not improve for %d epochs", progress.bad_epochs)
            break
    return False


def finish(contract, hp, ranks: Ranks, d: Data, parts: Parts, progress: Progress, dbg, times: dict) -> None:
    """Best weights -> test split -> exported model dir and summary.json (leader)."""
    import json

    t0 = time.time()
    best_path = contract.checkpoint_dir / BEST
    if best_path.exists():
        parts.model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    distributed.broadcast_state(parts.model)  # only the leader keeps best.pth
    test = (evaluate(parts.model, parts.eval_criterion, d, "test", ranks, progress, dbg) if "test" in d.datasets
            else None)
    if test:
        record(contract, ranks, {"test_loss": test["loss"], "test_acc": test["acc"]})
    if ranks.rank == 0:
        state = {k: v.detach().cpu() for k, v in parts.model.state_dict().items()}
        config = export.model_config(hp["arch"], d.classes, d.image_size, d.resize_size, IMAGENET_MEAN,
                                     IMAGENET_STD)
        export.save_model(contract.model_dir, state, config)
    summary = {
        "epochs_run": len(progress.history),
        "best_epoch": progress.best["epoch"],
        "best_valid_loss": progress.best["valid_loss"],
        "best_valid_acc": progress.best.get("valid_acc"),
        "test_loss": test and test["loss"],
        "test_acc": test and test["acc"],
        "skipped_images": sum(len(v) for v in progress.bad_files.values()),
        "skipped_by_split": {k: len(v) for k, v in progress.bad_files.items()},
        "init_time": times["init"],
        "train_time": times["train"],
        "finalize_time": time.time() - t0,
        "classes": d.classes,
        "hyperparameters": hp,
    }
    if ranks.rank == 0:
        contract.output_data_dir.mkdir(parents=True, exist_ok=True)
        files.atomic_write_json(contract.summary_file, summary)
    distributed.barrier()  # no rank exits before the leader has written the model
    log.info("training complete: %s",
             json.dumps({k: summary[k] for k in ("epochs_run", "best_epoch", "best_valid_acc", "test_acc",
                                                 "skipped_images")}))


def train(contract) -> int:
    """Set-up (validated before the first step), resume, the epoch loop, export; 0 or STOPPED_EXIT."""
    t0 = time.time()
    hp = parse(split_reserved(contract.hyperparameters)[0])
    ranks = setup_ranks(contract, hp)
    if ranks.local_rank == 0:  # temp files a killed writer left: never loaded, never synced as checkpoints
        files.clean_temp(contract.checkpoint_dir, contract.model_dir, contract.output_data_dir, recursive=False)
    indexed, folders = data.load_splits(contract.split_dirs())
    model = build_model(hp, ranks, len(folders))
    d = load_data(indexed, folders, hp, ranks)
    steps = len(d.loaders["train"]) if not hp["max-steps"] else min(hp["max-steps"], len(d.loaders["train"]))
    parts = build_parts(hp, ranks, model, steps)
    progress = Progress(bad_files={split: set() for split in d.datasets})
    if hp["compile"] and hp["debug"]:
        log.warning("debug=true is not supported with compile=true: no smdebug tensors")
    # tensors come from the leader only (smdebug saves on the chief worker; the others would write nothing);
    # the profiler samples the host once (local rank 0): the processes of a host share its output folder
    dbg = debug_session.attach(contract, {**hp, "debug": hp["debug"] and not hp["compile"] and ranks.rank == 0,
                                     "profiler": hp["profiler"] and ranks.local_rank == 0}, parts.model,
                          [parts.criterion, parts.eval_criterion], workers=d.workers, start=t0,
                          batch_size=hp["batch-size"])
    times = {"init": time.time() - t0}
    log.info(
        "job ready in %.1fs: arch=%s classes=%d train=%d valid=%d test=%d device=%s amp=%s threads=%d workers=%d "
        "decode-on=%s", times["init"], hp["arch"], len(folders), len(d.datasets["train"]), len(d.datasets["valid"]),
        len(d.datasets.get("test", ())), ranks.device, ranks.amp, torch.get_num_threads(), d.workers,
        "device" if d.place else "workers",
    )
    ok = False
    try:
        checkpoint.resume(contract, parts, progress)
        train_start = time.time()
        stopped = fit(contract, hp, ranks, d, parts, progress, dbg)
        times["train"] = time.time() - train_start
        if stopped:
            log.info("stopped: checkpoint written to %s", contract.checkpoint_dir / CHECKPOINT)
            return STOPPED_EXIT
        finish(contract, hp, ranks, d, parts, progress, dbg, times)
        ok = True
    finally:
        dbg.close(failed=not ok)  # flush + verify tensors, stop the sampler, rules-at-end
        if ok:
            distributed.barrier()  # no host exits before the leader is done (SageMaker local mode stops the rest)
        distributed.cleanup()
    return 0




def progress_bar(total, desc):
    """tqdm on a terminal; otherwise a plain log line at every quarter of the epoch."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False)

    class Lines:
        done = 0
        marks = {max(1, round(total * q / 4)) for q in (1, 2, 3)} if total >= 8 else set()

        def update(self, n):
            self.done += n
            if self.done in self.marks:
                log.info("%s: step %d/%d", desc, self.done, total)

        def close(self):
            pass

    return Lines()


def failure_reason(exc: BaseException) -> str:
    known = (HyperparameterError, data.DataError, model_mod.WeightsError)
    if isinstance(exc, known):
        return f"{type(exc).__name__}: {exc}"
    short_of_shm = shm.exhaustion_reason(exc)  # /dev/shm ran out: say so and name the fix, not torch's words
    if short_of_shm:
        return short_of_shm
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""  # a DataLoader worker's error carries its traceback first
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {message}{where}"


def procs_per_host(contract) -> int:
    """Processes on this host: the toolkit's override, else one per visible GPU, else one."""
    gpus = contract.num_gpus if torch.cuda.is_available() else 0
    return processes_per_host(contract.hyperparameters, gpus)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="train", description="SageMaker-contract training entrypoint")
    parser.add_argument("--ml-root",
                        help=f"job root laid out like /opt/ml (default: ${contract_mod.ROOT_ENV} or /opt/ml)")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.ml_root:
        os.environ[contract_mod.ROOT_ENV] = str(Path(args.ml_root).resolve())
    setup_logging()
    Stop.install()
    contract = None
    try:
        contract = contract_mod.load()
        per_host = procs_per_host(contract)
        if per_host > 1 and "LOCAL_RANK" not in os.environ:  # this host's launcher: one process per GPU
            code = distributed.launch_local(per_host, [sys.executable, "-m", "localsage.container.train"],
                                            single_host=len(contract.hosts) <= 1)
        else:
            code = train(contract)
    except Exception as exc:  # the contract: reason in output/failure, non-zero exit
        reason = failure_reason(exc)
        log.error("training failed: %s", reason)
        if not isinstance(exc, (HyperparameterError, data.DataError, model_mod.WeightsError)):
            traceback.print_exc(file=sys.stdout)
        contract_mod.write_failure(contract.failure_file if contract else contract_mod.failure_file(), reason)
        code = 1
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
