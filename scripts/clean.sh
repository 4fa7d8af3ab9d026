#!/usr/bin/env bash
# Delete our labeled containers/pods/images for a run prefix: scripts/clean.sh [--containers] [--images] [--pods] [--dry-run] [--prefix P] [key=value ...]
exec "$(dirname "${BASH_SOURCE[0]}")/python" -m harbor_ray clean "$@"
