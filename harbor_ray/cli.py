"""`python -m harbor_ray COMMAND [--flags] [key=value overrides…]` (also the `harbor-ray` console script).

`COMMANDS` is the one table of commands: each lives in its own module with `main(argv) -> int`, and
every one is listed by `--help`. This file only dispatches and turns harbor_ray errors into one line on
stderr (exit 2), never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from typing import Any

from harbor_ray.errors import HarborRayError

# name -> (module with main(argv) -> int, one line for --help)
COMMANDS = {
    "run": ("harbor_ray.ops.preflight", "run Harbor trials on the sandbox pool and report rewards"),
    "dryrun": ("harbor_ray.ops.dryrun", "check that the configured backend will work, and why not"),
    "clean": ("harbor_ray.ops.clean", "delete our labeled containers/pods/images for a run prefix"),
    "images": ("harbor_ray.ops.images", "base images (offline); `images build tasks=…` prebuilds task images"),
    "config": ("harbor_ray.ops.show", "print the composed config, or every key with its doc (--keys)"),
    "metrics": ("harbor_ray.ops.metrics", "the pool's Ray metrics, scraped from every Ray node's Prometheus endpoint"),
    "verl-dataset": ("harbor_ray.verl.dataset", "write a verl RLHFDataset parquet from Harbor tasks"),
    "train-smoke": ("harbor_ray.ops.train_smoke", "a few GRPO steps of verl's own trainer on CPU (tiny model)"),
}


def usage() -> str:
    lines = ["usage: python -m harbor_ray [-q|-v|-vv] COMMAND [--flags] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'python -m harbor_ray COMMAND --help' for a command's flags."]
    return "\n".join(lines)


class _Verbosity(logging.Filter):
    """Which records reach the terminal: harbor_ray's own at INFO, everyone else's (Harbor, Ray, SDKs) at
    WARNING; -q: only warnings; -v: everyone's INFO and harbor_ray's DEBUG; -vv: everything."""

    def __init__(self, verbosity: int) -> None:
        super().__init__()
        self.ours = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
        self.others = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "harbor_ray" or record.name.startswith("harbor_ray.")
        return record.levelno >= (self.ours if ours else self.others)


def configure_logging(verbosity: int = 0, stream: Any = None) -> logging.Handler:
    """One stderr handler on the root logger, filtered by `verbosity` (-1 quiet, 0 default, 1 or 2 verbose).

    The filter sits on the handler, not on logger levels, because libraries (Harbor) set their own
    loggers to DEBUG and would otherwise print every debug line through the root handler.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Verbosity(verbosity))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    return handler


def _verbosity(args: list[str]) -> tuple[int, list[str]]:
    """-q/--quiet, -v/--verbose, -vv before or after the command, taken out of the command's arguments."""
    level, rest = 0, []
    for arg in args:
        if arg in ("-q", "--quiet"):
            level = -1
        elif arg in ("-v", "--verbose", "-vv"):
            level = max(level, 0) + (2 if arg == "-vv" else 1)
        else:
            rest.append(arg)
    return min(level, 2), rest


def main(argv: list[str] | None = None) -> int:
    verbosity, argv = _verbosity(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    configure_logging(verbosity)
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except HarborRayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM for commands that handle it (run): 128 + the signal
        signum = int(getattr(e, "signum", signal.SIGINT))
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
