"""Every config key with its default and its doc, read from the config dataclasses' `Attributes:` sections."""

from __future__ import annotations

import dataclasses
from typing import Any

from harbor_ray.backends import REGISTRY, entry
from harbor_ray.config.schema import Config


def _attribute_docs(cls: type) -> dict[str, str]:
    """The `Attributes:` section of a config dataclass's docstring, by field name (continuation lines joined)."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    current = ""
    for line in lines[start + 1 :]:
        text = line.strip()
        if not text or text.startswith(">>>"):
            break
        name, sep, doc = text.partition(": ")
        if sep and name.isidentifier() and len(line) - len(line.lstrip()) <= 8:
            current = name
            docs[current] = doc
        elif current:
            docs[current] += " " + text
    return docs


def describe_keys(backend_kind: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every config key, the backend's per kind (all kinds when none is given).

    >>> ("pool.max_sandboxes", "16") in [(k, d) for k, d, _ in describe_keys()]
    True
    """
    rows: list[tuple[str, str, str]] = []

    def walk(cls: type, instance: Any, prefix: str) -> None:
        docs = _attribute_docs(cls)
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(value) and f.name != "backend":
                walk(type(value), value, f"{prefix}{f.name}.")
            elif f.name != "backend":
                rows.append((prefix + f.name, repr(value), docs.get(f.name, "")))

    walk(Config, Config(), "")
    kinds = [backend_kind] if backend_kind else list(REGISTRY)
    seen: set[type] = set()
    for kind in kinds:
        cls = entry(kind).config_class
        if cls in seen:
            continue
        seen.add(cls)
        start = len(rows)
        walk(cls, cls(), "backend.")
        kinds_of = "|".join(k for k in REGISTRY if REGISTRY[k].config_class is cls)
        rows[start:] = [(key, default, f"[{kinds_of}] {doc}") for key, default, doc in rows[start:]]
    return rows
