"""TorchServe handler for SageMaker script-mode models: the user's inference.py in model/code/.

Standalone (torch, numpy, Pillow, serve/script_defaults.py and script_errors.py beside it; never
localsage), staged into the served model dir by serve/script_stage.py. The contract
(aws/sagemaker-pytorch-inference-toolkit's):
  * the module is SAGEMAKER_PROGRAM without .py (default `inference`), imported from <model_dir>/code
    (put first on sys.path); the staged model-config.yaml's `handler: {program: ...}` names it. A model
    dir without code/ (and no program named) is served by the default functions alone
  * model_fn(model_dir) once per worker; input_fn(body, content_type), predict_fn(data, model),
    output_fn(prediction, accept) per request; each may take a trailing `context` argument;
    transform_fn(model, body, content_type, accept) replaces the three (defining both is a load error);
    optional pre_model_fn(model_dir) and model_warmup_fn(model_dir, model); missing functions fall back
    to serve/script_defaults.py
  * JSON and CSV bodies reach input_fn as str, others as bytes; a missing Content-Type is
    application/octet-stream; Accept missing or */* -> SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    (application/json); output_fn may return (body, content_type)
  * BATCH_PREDICT = True in the module: input_fn per request, then predict_fn once with the list of
    inputs of the batch (it must return a list of the same length), then output_fn per request
Beyond the toolkit: each request of a TorchServe batch is answered on its own (its own headers, its
own status): an exception in user code becomes that request's JSON {code, type, message} (the
traceback goes to the log, never to the client): input_fn -> 415 when the content type is unsupported
(the defaults' own error, or an exception class whose name contains "Unsupported"), else 400;
output_fn -> 406 for such an "Unsupported" exception (an Accept it cannot produce), else 500;
predict_fn -> 500; CUDA out of memory -> 507. A load failure (import, model_fn, both
transform_fn and predict_fn) is written to $LOCALSAGE_STARTUP_FAILURE (once; a known one, such as a whole
pickled model torch.load refuses, as serve/script_errors.py's clear reason) so that the launcher stops the
server and exits non-zero instead of staying up half-alive.
"""

import importlib
import inspect
import json
import logging
import os
import sys
import traceback

import torch

import script_defaults as defaults
import script_errors  # known load failures -> one clear reason (staged beside this file)
from handler_errors import RequestError

log = logging.getLogger(__name__)

DEFAULT_PROGRAM = "inference.py"
STAGES = ("input_fn", "predict_fn", "output_fn")


class LoadError(Exception):
    """The user module cannot be served (bad combination of functions, missing module)."""


def _takes_context(fn, n):
    """True when fn takes one more positional argument than the n of the contract (the context)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= n + 1


def _bind(fn, n, context_getter):
    if _takes_context(fn, n):
        return lambda *args: fn(*args, context_getter())
    return fn


def _header(context, idx, name):
    """A request header of request idx, case-insensitively (TorchServe keeps the client's spelling)."""
    try:
        props = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    for key, value in props.items():
        if isinstance(key, str) and key.lower() == name:
            return value.decode() if isinstance(value, (bytes, bytearray)) else value
    return None


def module_name(program):
    program = (program or DEFAULT_PROGRAM).strip()
    return program[:-3] if program.endswith(".py") else program


class ScriptService:
    def __init__(self, model_dir, context=None, program=None, env=None):
        env = os.environ if env is None else env
        self.model_dir = model_dir
        self.context = context
        self.default_accept = env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or defaults.JSON
        code_dir = os.path.join(model_dir, "code")
        name = module_name(program)
        if not (os.path.isfile(os.path.join(code_dir, name + ".py"))
                or os.path.isfile(os.path.join(code_dir, name, "__init__.py"))):
            if os.path.isdir(code_dir) or (program or DEFAULT_PROGRAM) != DEFAULT_PROGRAM:
                raise LoadError(f"no module {name!r} in {code_dir} (SAGEMAKER_PROGRAM={program or DEFAULT_PROGRAM}): "
                                f"put {name}.py in the model's code/ folder")
            self.module = None  # no code/ at all: the default functions serve the model (model.pt)
        else:
            if code_dir in sys.path:
                sys.path.remove(code_dir)
            sys.path.insert(0, code_dir)
            self.module = importlib.import_module(name)
        fns = {n: getattr(self.module, n, None) for n in ("model_fn", "transform_fn", *STAGES)}
        given = [n for n in STAGES if fns[n] is not None]
        self.batch_predict = getattr(self.module, "BATCH_PREDICT", False) is True
        if fns["transform_fn"] is not None and given:
            raise LoadError(f"{name}.py defines transform_fn and {', '.join(given)}: transform_fn replaces "
                            "input_fn/predict_fn/output_fn; define one or the other")
        if fns["transform_fn"] is not None and self.batch_predict:
            raise LoadError(f"{name}.py sets BATCH_PREDICT = True with transform_fn; BATCH_PREDICT needs predict_fn")
        ctx = lambda: self.context  # noqa: E731 - the context of the batch being served
        self.transform_fn = _bind(fns["transform_fn"], 4, ctx) if fns["transform_fn"] else None
        self.input_fn = _bind(fns["input_fn"] or defaults.default_input_fn, 2, ctx)
        self.predict_fn = _bind(fns["predict_fn"] or defaults.default_predict_fn, 2, ctx)
        self.output_fn = _bind(fns["output_fn"] or defaults.default_output_fn, 2, ctx)
        self.user = {n: fns[n] is not None for n in fns}
        pre = getattr(self.module, "pre_model_fn", None)
        if pre is not None:
            _bind(pre, 1, ctx)(model_dir)
        self.model = _bind(fns["model_fn"] or defaults.default_model_fn, 1, ctx)(model_dir)
        warmup = getattr(self.module, "model_warmup_fn", None)
        if warmup is not None:
            _bind(warmup, 2, ctx)(model_dir, self.model)

    # ------------------------------------------------------------------------------- one request

    def _request(self, item, idx, context):
        """(body, content_type, accept) of request idx, from its own headers."""
        body = item.get("body") if isinstance(item, dict) else item
        if body is None and isinstance(item, dict):
            body = item.get("data")
        if body is None:
            body = b""
        if isinstance(body, (dict, list)):  # decode_input_request=true servers hand JSON over parsed
            body = json.dumps(body)
        if isinstance(body, bytearray):
            body = bytes(body)
        ctype = _header(context, idx, "content-type") or "application/octet-stream"
        ctype = ctype.split(";")[0].strip().lower()
        accept = (_header(context, idx, "accept") or "").strip()
        if not accept or accept == defaults.ANY:
            accept = self.default_accept
        if ctype in defaults.UTF8_TYPES and isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(400, "InvalidEncoding", f"{ctype} body is not UTF-8: {e}")
        return body, ctype, accept

    def _call(self, stage, fn, *args):
        try:
            return fn(*args)
        except RequestError:
            raise
        except torch.cuda.OutOfMemoryError as e:
            log.exception("%s ran out of GPU memory", stage)
            raise RequestError(507, type(e).__name__, f"{stage} ran out of GPU memory")
        except Exception as e:  # noqa: BLE001 - user code: answer this request, keep serving
            log.error("%s raised:\n%s", stage, traceback.format_exc())
            code, unsupported = 500, "Unsupported" in type(e).__name__
            if stage == "input_fn":
                code = 415 if unsupported else 400
            elif stage == "output_fn" and unsupported:
                code = 406
            raise RequestError(code, type(e).__name__,
                               f"{stage}: {e}" if str(e) else f"{stage} raised {type(e).__name__}")

    def _respond(self, result, accept, idx, context):
        body, ctype = result, accept
        if isinstance(result, tuple) and len(result) == 2:
            body, ctype = result
        if isinstance(body, bytearray):
            body = bytes(body)
        elif not isinstance(body, (bytes, str)):
            try:
                body = json.dumps(body)
            except (TypeError, ValueError):
                raise RequestError(500, "InvalidOutput", f"output_fn returned {type(body).__name__}; "
                                                         "return bytes or str (or (body, content_type))")
        if context is not None:
            context.set_response_content_type(idx, ctype)
        return body

    def _error(self, err, idx, context):
        if context is not None:
            context.set_response_status(code=err.code, phrase=err.kind, idx=idx)
            context.set_response_content_type(idx, defaults.JSON)
        return json.dumps(err.body())

    def handle(self, data, context):
        """One TorchServe batch -> one answer per request, each with its own headers and status."""
        self.context = context
        out = [None] * len(data)
        pending = []  # BATCH_PREDICT: (idx, accept, input)
        for idx, item in enumerate(data):
            try:
                body, ctype, accept = self._request(item, idx, context)
                if self.transform_fn is not None:
                    result = self._call("transform_fn", self.transform_fn, self.model, body, ctype, accept)
                    out[idx] = self._respond(result, accept, idx, context)
                    continue
                x = self._call("input_fn", self.input_fn, body, ctype)
                if self.batch_predict:
                    pending.append((idx, accept, x))
                    continue
                prediction = self._call("predict_fn", self.predict_fn, x, self.model)
                out[idx] = self._respond(self._call("output_fn", self.output_fn, prediction, accept), accept, idx,
                                         context)
            except RequestError as e:
                out[idx] = self._error(e, idx, context)
        if pending:
            self._predict_batch(pending, out, context)
        return out

    def _predict_batch(self, pending, out, context):
        try:
            predictions = self._call("predict_fn", self.predict_fn, [x for _, _, x in pending], self.model)
            if len(predictions) != len(pending):
                raise RequestError(500, "BatchSizeMismatch", f"predict_fn returned {len(predictions)} predictions "
                                                             f"for {len(pending)} inputs (BATCH_PREDICT = True)")
        except (RequestError, TypeError) as e:
            err = e if isinstance(e, RequestError) else RequestError(500, "BatchSizeMismatch", str(e))
            for idx, _, _ in pending:
                out[idx] = self._error(err, idx, context)
            return
        for (idx, accept, _), prediction in zip(pending, predictions):
            try:
                out[idx] = self._respond(self._call("output_fn", self.output_fn, prediction, accept), accept, idx,
                                         context)
            except RequestError as e:
                out[idx] = self._error(e, idx, context)


def _record_failure(reason):
    """Append reason to $LOCALSAGE_STARTUP_FAILURE, once (TorchServe restarts a failed worker)."""
    path = os.environ.get("LOCALSAGE_STARTUP_FAILURE")
    if path:
        try:
            with open(path, "a+") as f:
                f.seek(0)
                if reason.rstrip() not in f.read():
                    f.write(reason.rstrip() + "\n")
        except OSError as e:
            log.error("cannot write %s: %s", path, e)


_service = None


def handle(data, context):
    """TorchServe entry point; called with data=None once to initialise the worker."""
    global _service
    if _service is None:
        props = context.system_properties
        yaml_handler = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        program = yaml_handler.get("program") or os.environ.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
        try:
            _service = ScriptService(props.get("model_dir"), context, program)
        except Exception as e:
            reason = f"script model failed to load ({module_name(program)}): {type(e).__name__}: {e}"
            log.error("%s\n%s", reason, traceback.format_exc())
            text = traceback.format_exc()
            if script_errors.explain(text):  # a known failure: one clear reason instead of torch's long message
                reason = f"script model failed to load ({module_name(program)}): {script_errors.reason(text)}"
                log.error("%s", reason)
                _record_failure(reason)
            else:
                _record_failure(reason + "\n" + traceback.format_exc(limit=-3))
            raise
        log.info("script model ready: %s (user functions: %s%s)", module_name(program),
                 ", ".join(n for n, v in _service.user.items() if v) or "none",
                 "; BATCH_PREDICT" if _service.batch_predict else "")
    if data is None:
        return None
    return _service.handle(data, context)
