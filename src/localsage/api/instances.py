"""SageMaker's training instance types, as the service checks them (botocore's TrainingInstanceType enum),
and what one means on this machine: GPU types (ml.p*, ml.g*) get the GPUs when there are any."""
from __future__ import annotations

import functools
import re

from localsage.api.errors import validation

GPU_TYPE = re.compile(r"ml\.(p|g)\d")  # ml.p3.2xlarge, ml.g5.xlarge, ml.g4dn.xlarge, ...


@functools.lru_cache(maxsize=1)
def training_instance_types() -> tuple:
    from localsage.api.validate import service_model

    return tuple(service_model().shape_for("TrainingInstanceType").enum)


def check_training_instance_type(value, field: str = "resourceConfig.instanceType") -> str:
    """The type, or the ValidationException SageMaker answers for one it does not have."""
    types = training_instance_types()
    if value not in types:
        raise validation(field, f"Member must satisfy enum value set: [{', '.join(types)}] (got {str(value)[:80]!r})")
    return value


def is_gpu_type(instance_type: str) -> bool:
    return bool(GPU_TYPE.match(str(instance_type or "")))
