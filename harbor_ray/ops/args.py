"""The arguments every config-reading operator command shares: `--config FILE` and `key=value` overrides."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config` and the positional overrides (read them with `parse_intermixed_args`); return the parser.

    >>> add_config_args(argparse.ArgumentParser()).parse_intermixed_args(["backend=k8s", "--config", "c.yaml"])
    Namespace(config='c.yaml', overrides=['backend=k8s'])
    """
    parser.add_argument("--config", help="a YAML config file (plain or the seed's runtime_info layout)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. backend=docker_remote")
    return parser
