"""Per-request errors and settings of the TorchServe handler (no localsage imports)."""

import os

from handler_defaults import HANDLER


class RequestError(Exception):
    """A problem with one request; becomes that request's own JSON answer with `code`.

    4xx: the request's fault (bad bytes, too large, too expensive); 5xx: the server's."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message

    def body(self):
        return {"code": self.code, "type": self.kind, "message": self.message}


def _coerce(value, default):
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    return type(default)(value)


def load_settings(yaml_handler=None, env=None):
    """handler_defaults.HANDLER <- model-config.yaml `handler:` <- LOCALSAGE_SERVE_<NAME>."""
    env = os.environ if env is None else env
    settings = dict(HANDLER)
    from_env = {k: env["LOCALSAGE_SERVE_" + k.upper()] for k in HANDLER if "LOCALSAGE_SERVE_" + k.upper() in env}
    for source in (yaml_handler or {}, from_env):
        for key, value in source.items():
            if key in HANDLER:
                try:
                    settings[key] = _coerce(value, HANDLER[key])
                except (TypeError, ValueError) as e:
                    raise ValueError(f"handler setting {key}={value!r}: {e}") from None
    return settings
