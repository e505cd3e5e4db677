"""The API's errors, in the real service's words: `ApiError(code, message, status)` becomes the AWS JSON
error `{"__type": code, "message": message}` with that status. The SDKs match some of these texts (v2's
`_deployment_entity_exists` wants a ValidationException saying "Could not find", `_create_resource` one saying
"Cannot create already existing"), so each kind says what SageMaker says."""
from __future__ import annotations

import json


class ApiError(Exception):
    """A request the service refuses: code (the AWS error code), message, HTTP status (400 unless told)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def __str__(self) -> str:  # a job's FailureReason may quote it as is
        return self.message

    def body(self) -> dict:
        return {"__type": self.code, "message": self.message}

    def json(self) -> bytes:
        return json.dumps(self.body()).encode()


# Describe* of a missing resource: (code, message) as SageMaker answers them.
_NOT_FOUND = {
    "TrainingJob": ("ValidationException", "Requested resource not found."),
    "HyperParameterTuningJob": ("ResourceNotFound", "Amazon SageMaker can't find a tuning job with name {name}"),
    "Model": ("ValidationException", 'Could not find model "{name}".'),
    "EndpointConfig": ("ValidationException", 'Could not find endpoint configuration "{name}".'),
    "Endpoint": ("ValidationException", 'Could not find endpoint "{name}".'),
    "TransformJob": ("ValidationException", "Could not find requested job with name {name}"),
}
# Create* of a name already taken.
_EXISTS = {
    "TrainingJob": ("ResourceInUse", "Training job names must be unique within an AWS account and region, and a "
                                     "training job with this name already exists ({arn})"),
    "HyperParameterTuningJob": ("ResourceInUse", "Hyperparameter tuning job names must be unique within an AWS "
                                                 "account and region, and a job with this name already exists "
                                                 "({arn})"),
    "Model": ("ValidationException", 'Cannot create already existing model "{arn}".'),
    "EndpointConfig": ("ValidationException", 'Cannot create already existing endpoint configuration "{arn}".'),
    "Endpoint": ("ValidationException", 'Cannot create already existing endpoint "{arn}".'),
    "TransformJob": ("ResourceInUse", "Job name must be unique within an AWS account and region, and a job with "
                                      "this name already exists ({arn})"),
}


def validation(field: str, message: str) -> ApiError:
    """A bad value, naming the field as SageMaker does ('Value at ... failed to satisfy constraint')."""
    if not field:
        return ApiError("ValidationException", message)
    return ApiError("ValidationException", f"1 validation error detected: Value at '{field}' failed to satisfy "
                                           f"constraint: {message}")


def not_found(kind: str, name: str) -> ApiError:
    code, text = _NOT_FOUND.get(kind, ("ResourceNotFound", f"{kind} {{name}} does not exist."))
    return ApiError(code, text.format(name=name))


def already_exists(kind: str, name: str, arn: str | None = None) -> ApiError:
    code, text = _EXISTS.get(kind, ("ResourceInUse", f"{kind} {{arn}} already exists."))
    return ApiError(code, text.format(name=name, arn=arn or name))


def in_use(kind: str, name: str, message: str | None = None) -> ApiError:
    """A resource busy for this request (stopping a finished job, deleting what another uses)."""
    return ApiError("ResourceInUse", message or f"{kind} {name} is in use.")


def limit_exceeded(message: str) -> ApiError:
    return ApiError("ResourceLimitExceeded", message)


def unknown_operation(name: str) -> ApiError:
    return ApiError("UnknownOperationException", f"The operation {name!r} is not supported by localsage's API.")


def serialization(message: str) -> ApiError:
    return ApiError("SerializationException", message)


def too_large(limit: int, code: str = "ValidationException") -> ApiError:
    return ApiError(code, f"Request body is larger than {limit} bytes.", 413)


def internal(message: str = "An internal error occurred.") -> ApiError:
    return ApiError("InternalFailure", message, 500)
