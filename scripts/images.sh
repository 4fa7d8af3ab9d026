#!/usr/bin/env bash
# Build the offline base images (harbor-ray/base:bookworm, harbor-ray/busybox:latest) if missing.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/python" -m harbor_ray images "$@"
