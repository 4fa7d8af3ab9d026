"""`python -m harbor_ray config [--keys] [--config FILE] [key=value …]`: the composed config, or every key's doc.

`config` prints the config a run would use (after Hydra composition, the seed layout's mapping and
validation) as YAML; `config --keys` lists every key with its default and what it does.
"""

from __future__ import annotations

import argparse
import dataclasses

from omegaconf import OmegaConf

from harbor_ray.config import describe_keys, load_config
from harbor_ray.ops.args import add_config_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harbor_ray config", description=__doc__.splitlines()[0])
    parser.add_argument("--keys", action="store_true", help="list every key with its default and doc")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    if args.keys:
        rows = describe_keys()
        width = max(len(key) for key, _, _ in rows)
        for key, default, doc in rows:
            print(f"{key:<{width}}  {default:<24} {doc}")
        return 0
    cfg = load_config(args.overrides, args.config)
    print(OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg))), end="")
    return 0
