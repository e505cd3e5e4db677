"""Every training hyperparameter, defined once: name, type, default, meaning.

SageMaker passes hyperparameters as strings; `parse` turns them into typed values and rejects
unknown names and bad values with a message that names the problem.

The SageMaker SDK's framework estimators `json.dumps` every value (`"arch": "\"resnet50\""`,
`"lr": "0.001"`) and SageMaker adds keys of its own (`sagemaker_program`, ... and, for tuning
jobs, `_tuning_objective_metric`). `decode` / `split_reserved` undo that the way AWS's training
toolkit does; `parse` applies both first, so the built-in trainer accepts an SDK estimator's map.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass


class HyperparameterError(ValueError):
    pass


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: object
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True

    def convert(self, raw):
        if isinstance(raw, str):
            text = raw.strip()
            if self.type is bool:
                value = _bool(text)
            elif self.type is int:
                value = int(text)
            elif self.type is float:
                value = float(text)
            else:
                value = text
        elif self.type is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, self.type):
            value = raw
        else:
            raise ValueError(f"expected {self.type.__name__}")
        if self.type is float and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if self.choices and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            raise ValueError(f"must be {'>=' if self.min_inclusive else '>'} {self.min}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be <= {self.max}")
        return value


P = Param
PARAMS = (
    P("arch", str, "resnet50", "torchvision classification model name (torchvision.models.list_models)"),
    P("weights", str, "DEFAULT",
      "torchvision weights enum name (DEFAULT, IMAGENET1K_V2, ...), none, or a path to a state_dict .pth"),
    P("freeze", str, "none",
      "none | backbone (train the new head only) | until:<layer> (freeze layers before <layer>)"),
    P("epochs", int, 10, "maximum number of epochs", min=1),
    P("batch-size", int, 64, "images per step (per process when distributed)", min=1),
    P("lr", float, 1e-3, "peak learning rate", min=0, min_inclusive=False),
    P("optimizer", str, "adamw", "adamw | sgd", choices=("adamw", "sgd")),
    P("momentum", float, 0.9, "SGD momentum", min=0, max=1),
    P("weight-decay", float, 1e-4, "weight decay", min=0),
    P("scheduler", str, "cosine", "cosine | onecycle | none", choices=("cosine", "onecycle", "none")),
    P("warmup-epochs", int, 0, "linear warm-up epochs (cosine schedule)", min=0),
    P("label-smoothing", float, 0.0, "cross-entropy label smoothing", min=0, max=0.99),
    P("image-size", int, 224, "training/eval crop size in pixels", min=16),
    P("resize-size", int, 0, "eval resize before the center crop (0 = image-size * 256/224)", min=0),
    P("augment", bool, True, "RandomResizedCrop + horizontal flip for training (false: the eval transform)"),
    P("amp", str, "auto", "auto (bf16 where supported, fp16+GradScaler on older GPUs, off on CPU) | bf16 | fp16 | off",
      choices=("auto", "bf16", "fp16", "off")),
    P("channels-last", bool, True, "use channels_last memory format"),
    P("compile", bool, False, "torch.compile the model"),
    P("workers", int, -1, "DataLoader workers (-1 = sized to the cores)", min=-1),
    P("seed", int, 0, "random seed", min=0),
    P("patience", int, 0, "early stopping: stop after this many epochs without valid_loss improvement (0 = off)",
      min=0),
    P("strict-data", bool, False, "fail on unreadable images instead of skipping them"),
    P("data-cache", str, "decoded",
      "decoded: keep decoded pixels on local disk ($LOCALSAGE_CACHE_DIR, default <tmp>/localsage-cache-<uid>, "
      "private) so epochs after the first skip JPEG decoding (bit-identical images; off when it would not fit "
      "in memory or the disk lacks room) | off",
      choices=("decoded", "off")),
    P("decode-on", str, "workers",
      "where train JPEGs are decoded and augmented: workers (DataLoader workers, CPU) | device (the training "
      "device: nvJPEG's batched decoder on CUDA; the workers only read files and draw crops; the same crop/flip "
      "distribution)",
      choices=("workers", "device")),
    P("max-steps", int, 0, "stop each epoch after this many steps (0 = full epoch; for smoke tests)", min=0),
    P("threads", int, 0,
      "torch intra-op threads on CPU (0 = $OMP_NUM_THREADS, else the cores shared by this host's processes)", min=0),
    # debugger and profiler (localsage.debugger)
    P("debug", bool, True,
      "record smdebug tensors in output/tensors (debughookconfig.json, when SageMaker provides it, wins)"),
    P("debug-train-interval", int, 10,
      "save losses and labels/predictions at every one of the first 50 TRAIN steps, then every N", min=1),
    P("debug-eval-interval", int, 1,
      "save losses and labels/predictions every N EVAL (valid) and PREDICT (test) steps", min=1),
    P("debug-tensor-interval", int, 500,
      "save weights, biases, gradients (and ReLU activations) every N TRAIN steps", min=1),
    P("debug-strict", bool, True,
      "fail the job when smdebug wrote no tensors after the first saved step (false: log an error)"),
    P("rules", str, "default",
      "rules enabled for the job: default (all but DeadRelu, PoorWeightInitialization), all, none, or a comma "
      "list; DeadRelu/PoorWeightInitialization also record ReLU activations (large)"),
    P("rules-at-end", bool, False, "evaluate the enabled rules inside the job at its end (verdicts in output/rules)"),
    P("profiler", bool, True, "sample CPU/memory/GPU every 0.5 s and time every step into output/profiler"),
)
SPEC = {p.name: p for p in PARAMS}


def defaults() -> dict:
    return {p.name: p.default for p in PARAMS}


# Keys SageMaker and its SDK add for the container (never the program's own hyperparameters).
TUNING_OBJECTIVE_KEY = "_tuning_objective_metric"
RESERVED_PREFIX = "sagemaker_"
PROGRAM_KEY = "sagemaker_program"
SUBMIT_DIR_KEY = "sagemaker_submit_directory"
TORCH_DISTRIBUTED_KEY = "sagemaker_torch_distributed_enabled"
PROCESSES_PER_HOST_KEY = "sagemaker_mpi_num_of_processes_per_host"
LOG_LEVEL_KEY = "sagemaker_container_log_level"


# The toolkit's own keys (params.SAGEMAKER_HYPERPARAMETERS): removed from the framework parameters too.
TOOLKIT_KEYS = frozenset({
    PROGRAM_KEY, SUBMIT_DIR_KEY, "sagemaker_enable_cloudwatch_metrics", "sagemaker_region", LOG_LEVEL_KEY,
    "sagemaker_job_name", "default_user_module_name", TUNING_OBJECTIVE_KEY, "sagemaker_s3_output",
})


def is_reserved(key) -> bool:
    key = str(key)
    return key in TOOLKIT_KEYS or key.startswith(RESERVED_PREFIX)


def framework_params(reserved: dict) -> dict:
    """SM_FRAMEWORK_PARAMS: the reserved keys that are not the toolkit's own (e.g. distribution settings)."""
    return {k: v for k, v in reserved.items() if k not in TOOLKIT_KEYS}


def decode_value(value):
    """One value as the training toolkit reads it: JSON when it parses, else the raw string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def processes_per_host(values: dict, gpus: int) -> int:
    """Processes one host runs: sagemaker_mpi_num_of_processes_per_host when `values` (hyperparameters as
    sent, JSON-encoded, or decoded) hold it (AWS's toolkits apply it to every runner), else one per GPU,
    else one."""
    raw = (values or {}).get(PROCESSES_PER_HOST_KEY)
    value = decode_value(raw)
    if value in (None, ""):
        return max(1, gpus)
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if isinstance(value, bool) or count < 1:
        raise HyperparameterError(f"{PROCESSES_PER_HOST_KEY}={raw!r}: expected a whole number, at least 1")
    return count


def decode(raw: dict) -> dict:
    return {str(k): decode_value(v) for k, v in (raw or {}).items()}


def encode(values: dict) -> dict:
    """The SDK's framework-estimator form: every value `json.dumps`-ed."""
    return {str(k): json.dumps(v) for k, v in (values or {}).items()}


def split_reserved(values: dict) -> tuple[dict, dict]:
    """(the program's hyperparameters, SageMaker's reserved keys)."""
    user = {k: v for k, v in (values or {}).items() if not is_reserved(k)}
    reserved = {k: v for k, v in (values or {}).items() if is_reserved(k)}
    return user, reserved


def _unwrap(value):
    """A JSON string literal (`"\"resnet50\""`) -> its text; anything else unchanged (the typed
    conversion below reads `0.001`, `true`, `64` itself)."""
    decoded = decode_value(value)
    return decoded if isinstance(value, str) and isinstance(decoded, str) else value


def _debug_given(values: dict):
    """The built-in trainer's `debug` hyperparameter as given: True, False, or None (not given, or not a
    boolean: that fails in the job, with parse's message)."""
    if "debug" not in (values or {}):
        return None
    value = _unwrap(values["debug"])
    try:
        return value if isinstance(value, bool) else _bool(str(value))
    except ValueError:
        return None


def tensors_off(values: dict) -> bool:
    """True when the built-in trainer's `debug` hyperparameter turns its smdebug hook off."""
    return _debug_given(values) is False


def without_tensors(values: dict) -> dict:
    """The built-in trainer's hyperparameters under `--no-debug-tensors` (SageMaker's switch for the
    Debugger's tensors): `debug=false`, its own switch, so the two agree. ValueError where the
    hyperparameters ask for the tensors explicitly (debug=true)."""
    if _debug_given(values):
        raise ValueError("--no-debug-tensors turns off the tensors hook that debug=true asks for")
    values = dict(values or {})
    values.setdefault("debug", "false")
    return values


def parse(raw: dict) -> dict:
    """Typed hyperparameters from SageMaker's string map; raise HyperparameterError on any problem.

    Reserved keys (`sagemaker_*`, `_tuning_objective_metric`) are dropped and JSON-encoded string
    values unwrapped before anything is validated."""
    raw, _ = split_reserved(raw)
    raw = {str(k).replace("_", "-"): _unwrap(v) for k, v in raw.items()}
    unknown = sorted(set(raw) - set(SPEC))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter(s): {', '.join(unknown)}. Known: {', '.join(sorted(SPEC))}"
        )
    values = defaults()
    errors = []
    for name, text in raw.items():
        try:
            values[name] = SPEC[name].convert(text)
        except ValueError as exc:
            errors.append(f"{name}={text!r}: {exc}")
    if errors:
        raise HyperparameterError("invalid hyperparameter(s): " + "; ".join(errors))
    freeze = values["freeze"]
    if not (freeze in ("none", "backbone") or (freeze.startswith("until:") and len(freeze) > 6)):
        raise HyperparameterError(f"freeze={freeze!r}: must be none, backbone or until:<layer>")
    return values


def to_strings(values: dict) -> dict:
    """The SageMaker form: every value a string (booleans lower-case)."""
    out = {}
    for k, v in values.items():
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def markdown_table() -> str:
    rows = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for p in PARAMS:
        meaning = p.help.replace("|", r"\|")  # a literal | inside a markdown table cell
        rows.append(f"| `{p.name}` | {p.type.__name__} | `{p.default}` | {meaning} |")
    return "\n".join(rows)
