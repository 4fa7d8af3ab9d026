"""`python -m harbor_ray metrics [--address ADDR] [--json] [--all]`: the pool's Ray metrics as Prometheus reads them.

Every Ray node serves its processes' metrics in Prometheus text format at
`http://<node address>:<metrics export port>/metrics` (`ray start --metrics-export-port`; Ray picks a port when
not given; the node table has it). This command reads the node table, scrapes each alive node's endpoint and
parses the text with `prometheus_client`'s parser, as a Prometheus server would. The pool's metrics
(`harbor_ray.pool.metrics`) are application metrics, which Ray names `ray_<name>` (counters `ray_<name>_total`);
they come from the pool's process, so they appear on the endpoint of the node the pool runs on. Ray's own
labels (SessionName, WorkerId, …) are dropped and series that then coincide are summed; `--all` keeps every
metric of the endpoints, not only the pool's.
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["POOL_PREFIX", "Endpoint", "Sample", "endpoints", "main", "parse", "scrape", "scrape_all"]

POOL_PREFIX = "ray_harbor_ray_"  # Ray's prefix for application metrics, then the pool's own
OUR_LABELS = ("pool", "host", "state", "kind", "le")  # the tags harbor_ray sets, and a histogram bucket's bound
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Endpoint:
    """The metrics endpoint of one Ray node."""

    node_id: str
    address: str
    port: int
    alive: bool = True
    labels: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"


@dataclass(frozen=True)
class Sample:
    """One series: the sample's name (`ray_harbor_ray_sandbox_starts_total`, `…_bucket`), our labels, the value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str:
        return dict(self.labels).get(key, "")


def endpoints(nodes: list[dict[str, Any]]) -> list[Endpoint]:
    """The endpoints of a node table (`ray.nodes()`): one per node that exports metrics."""
    found = []
    for node in nodes:
        port = int(node.get("MetricsExportPort") or 0)
        if port:
            found.append(
                Endpoint(
                    node_id=str(node.get("NodeID", "")),
                    address=str(node.get("NodeManagerAddress", "")),
                    port=port,
                    alive=bool(node.get("Alive")),
                    labels=dict(node.get("Labels") or {}),
                )
            )
    return found


def scrape(url: str, timeout_s: float = TIMEOUT_S) -> str:
    """The Prometheus text an endpoint serves (one GET, as a Prometheus server's scrape)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (an http:// url we built)
        return str(response.read().decode("utf-8", "replace"))


def parse(text: str, prefix: str = POOL_PREFIX) -> list[Sample]:
    """The samples of the families named `prefix…`, with only our labels, series that coincide summed."""
    from prometheus_client.parser import text_string_to_metric_families

    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(prefix):
            continue
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k in OUR_LABELS))
            summed[(s.name, labels)] += s.value
    return [Sample(name, labels, value) for (name, labels), value in sorted(summed.items())]


def scrape_all(found: list[Endpoint], prefix: str = POOL_PREFIX) -> dict[Endpoint, list[Sample] | str]:
    """Each alive endpoint's samples, or the one-line reason it could not be read."""
    out: dict[Endpoint, list[Sample] | str] = {}
    for endpoint in found:
        if not endpoint.alive:
            out[endpoint] = "node not alive"
            continue
        try:
            out[endpoint] = parse(scrape(endpoint.url), prefix)
        except Exception as e:  # one node down must not hide the others
            out[endpoint] = f"{endpoint.url}: {type(e).__name__}: {str(e).strip()[:200]}"
    return out


def _render(results: dict[Endpoint, list[Sample] | str]) -> str:
    lines = []
    for endpoint, samples in results.items():
        lines.append(f"node {endpoint.node_id[:12]} {endpoint.url}")
        if isinstance(samples, str):
            lines.append(f"  ✗ {samples}")
            continue
        if not samples:
            lines.append("  (no pool metrics: the pool does not run on this node, or has not exported yet)")
        for s in samples:
            labels = ",".join(f"{k}={v}" for k, v in s.labels)
            lines.append(f"  {s.name}{{{labels}}} {s.value:g}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harbor_ray metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="auto", help="the Ray cluster (default: auto, i.e. RAY_ADDRESS or local)")
    parser.add_argument("--json", action="store_true", help="one JSON object: node id -> samples or error")
    parser.add_argument("--all", action="store_true", help="every metric of the endpoints, not only the pool's")
    args = parser.parse_args(argv)
    import ray

    ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        found = endpoints(ray.nodes())
    finally:
        ray.shutdown()
    results = scrape_all(found, "" if args.all else POOL_PREFIX)
    if args.json:
        data = {
            e.node_id: {"url": e.url, "error": r}
            if isinstance(r, str)
            else {"url": e.url, "samples": [{"name": s.name, "labels": dict(s.labels), "value": s.value} for s in r]}
            for e, r in results.items()
        }
        print(json.dumps(data))
    else:
        print(_render(results))
    return 0 if any(not isinstance(r, str) for r in results.values()) else 1
