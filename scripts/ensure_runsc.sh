#!/usr/bin/env bash
# gVisor's runsc (Debian's package `runsc`), which the sandbox.runtime tests register on a test host's dockerd.
# Idempotent and quiet: nothing happens when `runsc` is on PATH; otherwise apt-get installs it, and a failure says
# so in one line (the tests that need it would fail, never skip). It never touches the machine's own dockerd.
set -euo pipefail
command -v runsc >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_runsc: runsc (gVisor) is missing and cannot be installed here (needs root and apt-get): install Debian's runsc package" >&2
  exit 1
fi
log="$(mktemp)"
if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q runsc >"$log" 2>&1 \
       || { apt-get update -q >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q runsc >>"$log" 2>&1; }; }; then
  echo "ensure_runsc: apt-get install runsc failed: $(grep -E '^(E|W):' "$log" | tail -1) (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
command -v runsc >/dev/null 2>&1 || { echo "ensure_runsc: the runsc package installed no runsc on PATH" >&2; exit 1; }
