"""harbor_ray: Harbor trials in fresh sandboxes, each owned by a Ray actor, handed out by a pool."""

from harbor_ray.errors import HarborRayError

__all__ = ["HarborRayError"]
__version__ = "0.1.0"
