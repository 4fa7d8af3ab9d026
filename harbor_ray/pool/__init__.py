"""The sandbox pool: leases of fresh sandboxes, placed per host, kept warm, replaced when they die.

`SandboxPool`, `Lease` and `GroupLease` (handle.py) are the public face; the engine behind them is
`core.PoolCore`, run in-process or inside the named pool actor (remote.py). See docs/pool.md.
"""

from harbor_ray.pool.handle import GroupLease, Lease, SandboxPool

__all__ = ["GroupLease", "Lease", "SandboxPool"]
