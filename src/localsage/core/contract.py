"""SageMaker's training-container contract: the only module that knows the /opt/ml layout.

Facts (sagemaker-training-toolkit's environment.py and the BYOC docs):
- root is /opt/ml; SAGEMAKER_BASE_DIR overrides it (the toolkit's own variable name);
- input/config/hyperparameters.json holds every value as a string;
- input/config/inputdataconfig.json names the channels, data lives in input/data/<channel>;
- input/config/resourceconfig.json has current_host and hosts;
- the model goes to model/, failure reasons to output/failure, extra output to output/data/;
- SM_* environment variables (script mode in AWS's framework containers) win over the files.

Nothing is created at import time; `load()` returns an immutable snapshot.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from localsage.core import files

# SageMaker's rule for training job, model and endpoint names: letters, digits and hyphens, at most 63
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")

ROOT_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_ROOT = "/opt/ml"
CHECKPOINT_ENV = "SM_CHECKPOINT_DIR"
CODE_SUBDIR = "code"  # /opt/ml/code: SDK local mode (local_code) mounts the source dir here
SUCCESS_FILE = "success"
METRIC_POINTS_FILE = "metric_points.jsonl"  # one row per metric_definitions match (script jobs)
DEBUGHOOKCONFIG_FILE = "debughookconfig.json"
SMDEBUG_CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"  # smdebug reads its hook config from this path when set
DEBUG_HOOK_ENV = "LOCALSAGE_DEBUG_HOOK"  # "off": no default debughookconfig.json; else JSON of HookParameters
PIP_TARGET_ENV = "LOCALSAGE_PIP_TARGET"  # process backend: requirements.txt goes here, never into our venv
PROGRAM_ENV = "SAGEMAKER_PROGRAM"  # wins over the sagemaker_program hyperparameter
TRAINING_MODULE_ENV = "SAGEMAKER_TRAINING_MODULE"
CHANNELS = ("train", "valid", "test")
COMBINED_CHANNEL = "training"  # one channel holding train/ valid/ test/ (the dogImages layout on S3)


@dataclass(frozen=True)
class Contract:
    root: Path
    hyperparameters: dict = field(default_factory=dict)
    input_data_config: dict = field(default_factory=dict)
    resource_config: dict = field(default_factory=dict)
    channels: dict = field(default_factory=dict)
    model_dir: Path = None
    output_dir: Path = None
    output_data_dir: Path = None
    failure_file: Path = None
    checkpoint_dir: Path = None
    debughookconfig: dict | None = None
    hosts: tuple = ("algo-1",)
    current_host: str = "algo-1"
    num_gpus: int = 0

    @property
    def config_dir(self) -> Path:
        return config_dir(self.root)

    @property
    def tensors_dir(self) -> Path:
        return self.output_dir / "tensors"

    @property
    def profiler_dir(self) -> Path:
        return self.output_dir / "profiler"

    @property
    def rules_dir(self) -> Path:
        return self.output_dir / "rules"

    @property
    def metrics_file(self) -> Path:
        return self.output_data_dir / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.output_data_dir / "summary.json"

    def split_dirs(self) -> dict:
        """Folders of the train/valid/test splits: separate channels or one `training` channel."""
        dirs = {}
        for split in CHANNELS:
            if split in self.channels:
                dirs[split] = self.channels[split]
            elif COMBINED_CHANNEL in self.channels:
                dirs[split] = self.channels[COMBINED_CHANNEL] / split
        return dirs


def root_dir(root=None, env=None) -> Path:
    env = os.environ if env is None else env
    return Path(root or env.get(ROOT_ENV) or DEFAULT_ROOT)


def config_dir(root) -> Path:
    return Path(root) / "input" / "config"


def data_dir(root) -> Path:
    return Path(root) / "input" / "data"


def _read_json(path: Path, default):
    if not path.exists():
        return default
    with open(path) as f:
        return json.load(f)


def _count_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch missing or a broken driver: no GPUs
        return 0


def load(root=None, env=None, gpus=None) -> Contract:
    """gpus: a callable counting GPUs when SM_NUM_GPUS is unset (default: torch's count)."""
    env = os.environ if env is None else env
    root = root_dir(root, env)
    cfg = config_dir(root)
    hps = _read_json(cfg / "hyperparameters.json", {})
    if "SM_HPS" in env:
        hps = json.loads(env["SM_HPS"])
    hps = {k: v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()}
    inputs = _read_json(cfg / "inputdataconfig.json", {})
    resources = _read_json(cfg / "resourceconfig.json", {})

    channels = {}
    ddir = data_dir(root)
    names = set(inputs) | ({p.name for p in ddir.iterdir() if p.is_dir()} if ddir.is_dir() else set())
    for name in sorted(names):
        channels[name] = ddir / name
    for key, value in env.items():
        if key.startswith("SM_CHANNEL_"):
            channels[key[len("SM_CHANNEL_"):].lower()] = Path(value)

    hosts = env.get("SM_HOSTS")
    hosts = tuple(json.loads(hosts)) if hosts else tuple(resources.get("hosts") or ["algo-1"])
    current = env.get("SM_CURRENT_HOST") or resources.get("current_host") or hosts[0]
    gpus_env = env.get("SM_NUM_GPUS")
    output_dir = root / "output"
    return Contract(
        root=root,
        hyperparameters=hps,
        input_data_config=inputs,
        resource_config=resources,
        channels=channels,
        model_dir=Path(env.get("SM_MODEL_DIR") or root / "model"),
        output_dir=output_dir,
        output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR") or output_dir / "data"),
        failure_file=output_dir / "failure",
        checkpoint_dir=Path(env.get(CHECKPOINT_ENV) or root / "checkpoints"),
        debughookconfig=_read_json(cfg / DEBUGHOOKCONFIG_FILE, None) or _env_debughookconfig(root, env),
        hosts=hosts,
        current_host=current,
        num_gpus=int(gpus_env) if gpus_env is not None else (gpus or _count_gpus)(),
    )


def write_config(root, hyperparameters: dict, channels, hosts=("algo-1",), current_host=None) -> None:
    """Write input/config/*.json as SageMaker does (hyperparameter values as strings)."""
    cfg = config_dir(root)
    cfg.mkdir(parents=True, exist_ok=True)
    hps = {k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}
    inputs = {
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in channels
    }
    resources = {
        "current_host": current_host or hosts[0],
        "hosts": list(hosts),
        "network_interface_name": "eth0",
    }
    for name, content in (
        ("hyperparameters.json", hps),
        ("inputdataconfig.json", inputs),
        ("resourceconfig.json", resources),
    ):
        files.atomic_write_json(cfg / name, content, sort_keys=True)


def make_dirs(root) -> None:
    """Create the folders of a job root (the runner's job dir, or a container's /opt/ml)."""
    root = Path(root)
    for sub in ("input/config", "input/data", "model", "output/data", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def failure_file(root=None) -> Path:
    return root_dir(root) / "output" / "failure"


def write_failure(path, reason: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, reason.strip() + "\n")


# ---------------------------------------------------------------- script mode (the toolkit's layout)

def code_dir(root=None) -> Path:
    """/opt/ml/code (or <job>/code on the process backend)."""
    return root_dir(root) / CODE_SUBDIR


def container_path(*parts) -> str:
    """A path inside a training container (/opt/ml/...), whatever the local root is."""
    return str(Path(DEFAULT_ROOT, *parts))


def success_file(root) -> Path:
    return Path(root) / "output" / SUCCESS_FILE


def metric_points_file(root) -> Path:
    return Path(root) / "output" / "data" / METRIC_POINTS_FILE


def debughookconfig_file(root) -> Path:
    return config_dir(root) / DEBUGHOOKCONFIG_FILE


def tensors_dir(root) -> Path:
    return Path(root) / "output" / "tensors"


# What the built-in trainer saves (debugger/hook.py), as SageMaker's CollectionConfigurations.
DEFAULT_COLLECTIONS = (
    ("losses", {"train.save_interval": "10", "eval.save_interval": "1"}),
    ("labels_predictions", {"include_regex": "CrossEntropyLoss_input_.*",
                            "train.save_interval": "10", "eval.save_interval": "1"}),
    ("weights", {"save_interval": "500"}),
    ("biases", {"save_interval": "500"}),
    ("gradients", {"save_interval": "500"}),
)


def default_debughookconfig(local_path, hook_parameters: dict | None = None, collections: list | None = None) -> dict:
    """debughookconfig.json in the shape SageMaker writes for a DebuggerHookConfig.

    hook_parameters: the SDK's DebuggerHookConfig(hook_parameters=...), e.g. {"train.save_interval": "100"};
    collections: a request's CollectionConfigurations as given (None: localsage's default collections)."""
    if collections is None:
        collections = [{"CollectionName": name, "CollectionParameters": dict(params)}
                       for name, params in DEFAULT_COLLECTIONS]
    return {
        "LocalPath": str(local_path),
        "HookParameters": {str(k): str(v) for k, v in (hook_parameters or {}).items()},
        "CollectionConfigurations": list(collections),
    }


def debug_hook_parameters(env) -> dict | None:
    """What DEBUG_HOOK_ENV asks of a job: None when it turns the hook off, else the HookParameters it
    carries ({} when unset or when it carries none)."""
    setting = env.get(DEBUG_HOOK_ENV, "").strip()
    if setting.lower() in ("off", "false", "0", "no"):
        return None
    if not setting.startswith("{"):
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(setting).items()}
    except (ValueError, AttributeError):
        raise ValueError(f"{DEBUG_HOOK_ENV}={setting!r} is not a JSON object of hook parameters") from None


def _env_debughookconfig(root, env) -> dict | None:
    """SageMaker writes debughookconfig.json for a DebuggerHookConfig; the SDK's local mode does not, so a
    local job's hook parameters arrive in DEBUG_HOOK_ENV: the same config, or None when there are none."""
    params = debug_hook_parameters(env)
    return default_debughookconfig(tensors_dir(root), params) if params else None


def profiler_dir(root) -> Path:
    return Path(root) / "output" / "profiler"
