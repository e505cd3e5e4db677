"""Script mode: run a SageMaker user's own training program, unchanged, as AWS's framework containers do.

Container-side (imports only foundations: contract, hyperparameters):
- env.py   the toolkit's SM_* environment and the program's command line;
- code.py  /opt/ml/code or sagemaker_submit_directory (dir, tarball, s3://), requirements.txt;
- run.py   the program (.py, .sh, setup.py package, torchrun), outcome files, signal forwarding.
"""
from __future__ import annotations

from localsage.core.hyperparameters import PROGRAM_KEY


def requested(root=None, environ=None) -> bool:
    """True when the job names a user program (SAGEMAKER_PROGRAM or the sagemaker_program hyperparameter)."""
    import json
    import os

    from localsage.core import contract

    environ = os.environ if environ is None else environ
    if environ.get(contract.PROGRAM_ENV):
        return True
    path = contract.config_dir(contract.root_dir(root, environ)) / "hyperparameters.json"
    try:
        return PROGRAM_KEY in json.loads(path.read_text())
    except (OSError, ValueError):
        return False
