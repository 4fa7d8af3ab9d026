"""Old import path, kept because the docs told users to import it: use `harbor_ray.sandbox`."""

from harbor_ray.sandbox import Sandbox, actor_class, call_actor

__all__ = ["Sandbox", "actor_class", "call_actor"]
