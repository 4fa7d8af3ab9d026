"""Operator commands: `dryrun` (will this config work?), `clean` (remove what carries our labels), `images`."""
