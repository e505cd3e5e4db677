"""The image's `train` program: the built-in trainer, or the user's script when the job names one.

SageMaker runs `train` in the container. Like AWS's training toolkit: SAGEMAKER_TRAINING_MODULE
(`module:function`) names a training module to import and call; otherwise a job whose
hyperparameters carry `sagemaker_program` (or with SAGEMAKER_PROGRAM set) runs that program in
script mode (localsage.container.scriptmode); any other job runs localsage's built-in trainer.
torch is imported only on the built-in path, so script jobs start fast.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from localsage.core import contract

SELF = "localsage.container.entry:main"


def _ml_root(argv):
    """`train --ml-root DIR` (the built-in trainer's flag) sets SAGEMAKER_BASE_DIR for both paths."""
    for i, arg in enumerate(argv):
        if arg == "--ml-root" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--ml-root="):
            return arg.split("=", 1)[1]
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    root = _ml_root(argv)
    if root:
        os.environ[contract.ROOT_ENV] = str(Path(root).resolve())
    module = os.environ.get(contract.TRAINING_MODULE_ENV, "")
    if module and module not in (SELF, "localsage.container.train:main"):
        name, _, func = module.partition(":")
        return getattr(importlib.import_module(name), func or "main")() or 0
    from localsage.container import scriptmode

    if scriptmode.requested():
        from localsage.container.scriptmode import run

        return run.main()
    from localsage.container import train

    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
