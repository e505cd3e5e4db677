"""Known failures of a user's model code, each turned into one clear reason (stdlib only).

The one place for these reasons. Read by serve/script_handler.py (a TorchServe worker's load failure,
staged beside it), serve/serve (the load-once check's stderr) and, through localsage.core.serve_dir, by
script training jobs (localsage.container.scriptmode.run: the failure file) and the host's `localsage serve`.
  * "Weights only load failed": torch >= 2.6 refuses a whole pickled model in torch.load
  * a ModuleNotFoundError / ImportError of `sagemaker.serve...`: code written by SDK v3's ModelBuilder
    (InferenceSpec), while the serving environment carries SDK v2's `sagemaker` package
last_exception() picks the final exception line(s) of the last traceback out of a process's stderr.
"""

import re

FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch's own switch; never set by localsage
WEIGHTS_ONLY_FAILED = "Weights only load failed"  # torch's words

WEIGHTS_ONLY_REASON = (
    "torch.load refused a whole pickled model{what} (\"Weights only load failed\": torch >= 2.6 loads weights "
    "only by default). Fix it one of two ways: save a state_dict instead, torch.save(model.state_dict(), path), "
    "and load it into the model class, model = Net(); model.load_state_dict(torch.load(path)); or, only for a "
    f"model file you trust, set {FORCE_NO_WEIGHTS_ONLY}=1 in the environment that loads it (localsage serve --env "
    f"{FORCE_NO_WEIGHTS_ONLY}=1, docker run -e {FORCE_NO_WEIGHTS_ONLY}=1, a SageMaker Model's env, or the "
    "training job's --env); it applies only where the script's torch.load passes no weights_only argument.")

SDK_V3_REASON = (
    "the model code imports {module} from the SageMaker Python SDK v3 (ModelBuilder's InferenceSpec flow writes "
    "such a code/inference.py). InferenceSpec needs SDK v3 inside the container, but this serving environment "
    "carries SDK v2's `sagemaker` package (for the SDK's local mode; v3 has the same package name and cannot sit "
    "beside it). Serve a plain inference.py instead, with model_fn/input_fn/predict_fn/output_fn: give it to "
    "ModelBuilder through model_path (a folder with code/inference.py) or name it with "
    "env_vars={{\"SAGEMAKER_PROGRAM\": \"inference.py\"}}.")

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_SDK_V3_IMPORT = re.compile(r"(?:ModuleNotFoundError: No module named|ImportError: cannot import name '\w+' from)"
                            r" '(sagemaker\.serve(?:\.[\w.]+)?)'")

TRACEBACK = "Traceback (most recent call last):"
# lines after an exception that are not part of its message: a warning (warnings' "file:line: XWarning:"
# format, or a bare "XWarning: ..."), a log record, a new chained-exception header
_NOT_MESSAGE = re.compile(r"^(?:\S.*:\d+: )?\w*Warning: |^(?:WARNING|INFO|DEBUG|ERROR|CRITICAL)\b[: ]"
                          r"|^\d{4}-\d\d-\d\d[ T]\d|^During handling of the above|^The above exception")
MAX_EXCEPTION_LINES = 12
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's message has bold markers


def explain(text, serving=True):
    """The clear reason for a known failure found in text (a traceback, a process's stderr or an
    exception's "Type: message"), else None. serving=False (a training job): the serving ones left out."""
    if not text:
        return None
    if WEIGHTS_ONLY_FAILED in text:
        found = _UNSUPPORTED_GLOBAL.search(text)
        return WEIGHTS_ONLY_REASON.format(what=f" (a pickled {found.group(1)})" if found else "")
    found = serving and _SDK_V3_IMPORT.search(text)
    if found:
        return SDK_V3_REASON.format(module=found.group(1))
    return None


def last_exception(text):
    """The final exception line(s) of the last traceback in text: the exception's first line and the
    lines of its message up to a blank line or a warning/log line after it. Without a traceback, the
    last non-empty line ("" when there is none)."""
    lines = _ANSI.sub("", text or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().endswith(TRACEBACK)]
    if not starts:
        return next((line.strip() for line in reversed(lines) if line.strip()), "")
    i = starts[-1] + 1
    while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):  # the frames
        i += 1
    out = []
    for line in lines[i:i + MAX_EXCEPTION_LINES]:
        if not line.strip() or (out and _NOT_MESSAGE.search(line)):
            break
        out.append(line.rstrip())
    return "\n".join(out) or lines[starts[-1]].strip()


def reason(text):
    """One reason for a failed process from its stderr: the clear one when the failure is known
    (followed by the exception's first sentence), else the last traceback's exception line(s)."""
    last = last_exception(text)
    known = explain(text)
    if known is None:
        return last or "(no output)"
    first = last.splitlines()[0].split(". ")[0] if last else ""  # the exception and its first sentence
    return f"{known}\n({first})" if first else known
