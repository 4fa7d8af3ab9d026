"""Gang leases: N sandboxes reserved together with one Ray placement group, started all or none.

Slots are taken first (so host capacity holds), then a placement group with one bundle per sandbox
(`{pool.sandbox_resource: 1}`, or a sliver of CPU without one) pinned by each host's node labels,
then every sandbox actor starts inside its bundle. Any failure destroys what started and removes the group;
the group is removed too once the last of its leases is released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from harbor_ray.errors import SandboxStartError
from harbor_ray.pool.hosts import Host, bundle
from harbor_ray.pool.starter import Entry

if TYPE_CHECKING:
    from harbor_ray.backends.base import SandboxSpec
    from harbor_ray.pool.core import PoolCore
    from harbor_ray.sandbox import Sandbox

log = logging.getLogger(__name__)

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


async def start_group(core: PoolCore, key: SandboxSpec, lease_ids: list[str], strategy: str) -> list[Sandbox]:
    """Start len(lease_ids) sandboxes of `key` in one placement group and record them as those leases."""
    if strategy not in STRATEGIES:
        msg = f"gang lease strategy={strategy!r}: use one of {', '.join(STRATEGIES)}"
        raise SandboxStartError(msg)
    hosts: list[Host] = []
    try:
        for _ in lease_ids:
            place = await core.reserve(key, set(), new_only=True)
            assert place is not None  # new_only never waits for a warm sandbox
            hosts.append(place[0])
    except BaseException:
        for host in hosts:
            core.free(host)
        raise
    bundles = [bundle(core.config, h) for h in hosts]
    selectors = [s for _, s in bundles]
    group = placement_group(
        [b for b, _ in bundles], strategy=strategy, bundle_label_selector=selectors if any(selectors) else None
    )
    try:
        await asyncio.wait_for(group.ready(), core.config.start_timeout_s)
    except BaseException as e:
        remove_placement_group(group)
        for host in hosts:
            core.free(host)
        if isinstance(e, TimeoutError):
            msg = (
                f"gang of {len(hosts)} ({strategy}): its placement group was not ready within "
                f"{core.config.start_timeout_s:g}s; not enough free sandbox resources on the allowed nodes"
            )
            raise SandboxStartError(msg) from e
        raise
    results = await asyncio.gather(
        *(
            core.start_on(h, key, None, {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, i)})
            for i, h in enumerate(hosts)
        ),
        return_exceptions=True,
    )
    entries: list[Entry] = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(core.discard(e) for e in entries), return_exceptions=True)
        remove_placement_group(group)
        raise errors[0]
    for lease_id, entry in zip(lease_ids, entries, strict=True):
        entry.group = group
        core.record_lease(lease_id, entry)
    log.info("gang of %d started on %s", len(entries), ", ".join(sorted({h.name for h in hosts})))
    return [e.sandbox for e in entries]


def group_member_gone(group: Any, leases: Iterable[Entry]) -> None:
    """A lease of the gang was released: remove its placement group once no lease of it is left."""
    if not any(e.group is group for e in leases):
        remove_placement_group(group)
