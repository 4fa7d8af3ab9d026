#!/usr/bin/env bash
# Check that the configured backend (and Ray) will work, and why not: scripts/dryrun.sh [--json] [--pod] [--config FILE] [key=value ...]
exec "$(dirname "${BASH_SOURCE[0]}")/python" -m harbor_ray dryrun "$@"
