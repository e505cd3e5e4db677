"""SDK v3 client (run with the sagemaker 3.x venv, never localsage's): ModelTrainer in LOCAL_CONTAINER mode
over localsage's image, exactly as a user writes it. Prints one JSON line: {"artifacts": ..., "seconds": ...}.

    python v3_model_trainer.py --image localsage:latest --data DIR --root DIR [--source-dir D --entry E]
        [--hp key=value ...] [--processes N]
"""
import argparse
import json
import os
import time

from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData, SourceCode
from sagemaker.train.distributed import Torchrun
from sagemaker.train.model_trainer import Mode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--root", required=True, help="local_container_root")
    p.add_argument("--source-dir")
    p.add_argument("--entry")
    p.add_argument("--hp", action="append", default=[], help="key=value")
    p.add_argument("--processes", type=int, default=0, help="Torchrun(process_count_per_node=N)")
    args = p.parse_args()

    os.makedirs(args.root, exist_ok=True)  # the SDK makes temporary folders inside it, not the folder itself
    extra = {}
    if args.source_dir:
        extra["source_code"] = SourceCode(source_dir=args.source_dir, entry_script=args.entry)
    if args.processes:
        extra["distributed"] = Torchrun(process_count_per_node=args.processes)
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=args.image,
        compute=Compute(instance_type="local_cpu", instance_count=1),
        hyperparameters=dict(kv.split("=", 1) for kv in args.hp),
        input_data_config=[InputData(channel_name="training", data_source=args.data)],
        local_container_root=args.root,
        role="arn:aws:iam::111111111111:role/localsage-dummy",
        **extra,
    )
    start = time.monotonic()
    trainer.train()
    print(json.dumps({"root": args.root, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
