"""`python -m harbor_ray COMMAND [--flags] [key=value overrides…]` (also the `harbor-ray` console script).

`COMMANDS` is the one table of commands: each lives in its own module with `main(argv) -> int`, and
every one is listed by `--help`. This file only dispatches and turns harbor_ray errors into one line on
stderr (exit 2), never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from harbor_ray.errors import HarborRayError

# name -> (module with main(argv) -> int, one line for --help)
COMMANDS = {
    "run": ("harbor_ray.harbor.runner", "run Harbor trials on the sandbox pool and report rewards"),
    "dryrun": ("harbor_ray.ops.dryrun", "check that the configured backend will work, and why not"),
    "clean": ("harbor_ray.ops.clean", "delete our labeled containers/pods/images for a run prefix"),
    "images": ("harbor_ray.ops.images", "build the project's base images that are missing (offline)"),
    "config": ("harbor_ray.ops.show", "print the composed config, or every key with its doc (--keys)"),
    "verl-dataset": ("harbor_ray.verl.dataset", "write a verl RLHFDataset parquet from Harbor tasks"),
}


def usage() -> str:
    lines = ["usage: python -m harbor_ray COMMAND [--flags] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'python -m harbor_ray COMMAND --help' for a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except HarborRayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
