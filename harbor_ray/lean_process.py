"""Keep Ray's optional serializers out of a sandbox actor's worker process.

The first time a Ray worker serializes anything, Ray registers extra serializers for the packages it finds
installed: Arrow (importing pyarrow and numpy), pydantic and starlette. Harbor and verl install all of
them, so every worker pays ~190 modules, ~17 MB of unique memory and their import time. A sandbox actor
sends and receives only harbor_ray's own dataclasses, bytes and strings, never those types, so its process
makes its serialization context with those packages hidden, and only then shows them again: an import
of them later still works, and every other process (the driver, verl's workers, a user's actor that
imports harbor_ray) keeps Ray's full set.

It runs while the actor's class is loaded, which Ray does in the actor's creation task before it
deserializes the constructor's arguments (the first serialization). Anything unexpected in Ray's
internals leaves the process as Ray made it: this only saves memory.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["OPTIONAL_SERIALIZER_PACKAGES", "skip_optional_serializers"]

log = logging.getLogger(__name__)

# What ray.util.serialization_addons imports when present (Ray 2.x).
OPTIONAL_SERIALIZER_PACKAGES = ("pyarrow", "pydantic", "starlette")


def skip_optional_serializers(creation_task: str) -> bool:
    """In the creation task `creation_task` ("module.Class.__init__") of a worker process that has not
    serialized anything yet, make its serialization context without Ray's optional serializers.

    True when it did; False anywhere else (a driver, another task or actor, a context already made).
    """
    try:
        import ray
        from ray._private.worker import global_worker as worker

        if worker.mode != ray.WORKER_MODE or worker.serialization_context_map:
            return False
        if ray.get_runtime_context().get_task_function_name() != creation_task:
            return False
        hidden = [name for name in OPTIONAL_SERIALIZER_PACKAGES if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ModuleNotFoundError
        try:
            worker.get_serialization_context()
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
    except Exception as e:  # Ray's internals moved: keep Ray's default
        log.debug("optional serializers kept: %s", e)
        return False
    return True
