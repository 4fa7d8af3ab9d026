#!/usr/bin/env bash
# Delete our labeled containers/pods/images for a named run prefix (--prefix P or run_label=P; --orphans: only
# sandboxes whose owner is proven gone): scripts/clean.sh [--containers] [--images] [--pods] [--orphans] [--dry-run] [--prefix P] [key=value ...]
exec "$(dirname "${BASH_SOURCE[0]}")/python" -m harbor_ray clean "$@"
