#!/usr/bin/env bash
# A real kube-apiserver (1.20, from Debian bookworm's `kubernetes` source package, built with Debian's
# golang-1.19-go) and etcd (from Debian's etcd-server .deb, unpacked with dpkg -x, never installed as a
# service), cached outside the checkout for the Kubernetes test tier (tests/k8s).
#
#   scripts/k8s_harness.sh prepare   build/unpack once, then print KUBE_APISERVER=... and ETCD=...
#   scripts/k8s_harness.sh paths     print the cached paths (exit 1 if not prepared)
#   scripts/k8s_harness.sh clean     remove this Debian version's cached build
#
# Cache: ${HARBOR_RAY_CACHE:-$HOME/.cache/harbor_ray}/k8s-<kubernetes version>-etcd-<etcd version>/
# with bin/kube-apiserver, bin/etcd and env (the two lines printed by `prepare`). A second `prepare`
# only checks these files. The Debian archive's address is read from this machine's apt sources.
set -euo pipefail

CACHE="${HARBOR_RAY_CACHE:-$HOME/.cache/harbor_ray}"
GO_PKG=golang-1.19-go
GO_ROOT=/usr/lib/go-1.19
NEEDED_PKGS=("$GO_PKG" rsync make ca-certificates openssl curl)

log() { echo "k8s_harness: $*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

candidate() {  # candidate version of a binary package, from the machine's apt lists
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
}

lists_fingerprint() {  # changes whenever `apt-get update` brings new package lists
  stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* /var/lib/apt/lists/*Release 2>/dev/null | sha256sum | cut -c1-16
}

versions() {
  # Fast path (a warm `prepare` must take well under a second): the apt lists did not change since
  # the key was last computed from them.
  local fp memo
  fp="$(lists_fingerprint)"; memo="$CACHE/k8s-keys/$fp"
  if [ "${1:-}" != --full ] && [ -s "$memo" ]; then
    KEY="$(cat "$memo")"; DIR="$CACHE/$KEY"; return 0
  fi
  K8S_VER="$(candidate kubernetes-client)"; ETCD_VER="$(candidate etcd-server)"
  if [ -z "$K8S_VER" ] || [ "$K8S_VER" = "(none)" ] || [ -z "$ETCD_VER" ] || [ "$ETCD_VER" = "(none)" ]; then
    log "apt lists do not know kubernetes-client/etcd-server yet: apt-get update"
    as_root apt-get update -qq >&2
    K8S_VER="$(candidate kubernetes-client)"; ETCD_VER="$(candidate etcd-server)"
  fi
  { [ -n "$K8S_VER" ] && [ "$K8S_VER" != "(none)" ]; } || die "no kubernetes package in this machine's apt sources (Debian bookworm needed)"
  { [ -n "$ETCD_VER" ] && [ "$ETCD_VER" != "(none)" ]; } || die "no etcd-server package in this machine's apt sources"
  KEY="k8s-$(echo "$K8S_VER" | tr -c 'A-Za-z0-9.\n' '_')-etcd-$(echo "$ETCD_VER" | tr -c 'A-Za-z0-9.\n' '_')"
  DIR="$CACHE/$KEY"
  mkdir -p "$CACHE/k8s-keys"; echo "$KEY" > "$memo.tmp" && mv "$memo.tmp" "$memo"
}

ready() { [ -x "$DIR/bin/kube-apiserver" ] && [ -x "$DIR/bin/etcd" ] && [ -s "$DIR/env" ]; }

install_packages() {
  local missing=() p
  for p in "${NEEDED_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}" > "$DIR/apt-install.log" 2>&1 \
    || { tail -n 20 "$DIR/apt-install.log" >&2; die "apt-get install ${missing[*]} failed"; }
}

private_apt_opts() {  # a private apt state that knows the deb-src twins of this machine's deb sources
  local apt="$1"
  mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial"
  : > "$apt/sources.list"
  if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list >> "$apt/sources.list"
  fi
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    sed 's/^Types:.*/Types: deb-src/' "$f" > "$apt/parts/$(basename "$f")"
  done
  for f in /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" > "$apt/parts/$(basename "$f")"
  done
  APT_OPTS=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
            -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Debug::NoLocking=1"
            -o "APT::Sandbox::User=root")
}

build() {
  local work="$DIR/work"
  rm -rf "$work"; mkdir -p "$work" "$DIR/bin"
  install_packages

  log "etcd: unpacking etcd-server=$ETCD_VER with dpkg -x"
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "etcd-server=$ETCD_VER" >&2)
  dpkg -x "$work"/etcd-server_*.deb "$work/etcd-root"
  install -m 0755 "$work/etcd-root/usr/bin/etcd" "$DIR/bin/etcd"

  log "kubernetes: downloading source package $K8S_VER (deb-src from this machine's apt sources)"
  private_apt_opts "$work/apt"
  apt-get "${APT_OPTS[@]}" update -qq >&2
  # A binNMU (+bN) of the binary package is built from the unsuffixed source version.
  (cd "$work" && apt-get "${APT_OPTS[@]}" source -qq --download-only "kubernetes=${K8S_VER%+b[0-9]*}" >&2)
  local orig
  orig="$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)"
  mkdir -p "$work/src"
  tar -xf "$orig" -C "$work/src" --strip-components=1

  log "kubernetes: make WHAT=cmd/kube-apiserver (about 3 min on 2 cores; log: $work/build.log)"
  (
    cd "$work/src"
    export PATH="$GO_ROOT/bin:$PATH" GOROOT="$GO_ROOT" CGO_ENABLED=0 GOPROXY=off GOFLAGS= HOME="$work/home"
    mkdir -p .go/src/k8s.io "$HOME"
    [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
    export GOPATH="$PWD/.go"
    make WHAT=cmd/kube-apiserver > "$work/build.log" 2>&1
  ) || { tail -n 30 "$work/build.log" >&2; die "kube-apiserver build failed (log: $work/build.log)"; }
  install -m 0755 "$work/src/_output/bin/kube-apiserver" "$DIR/bin/kube-apiserver"
  "$DIR/bin/kube-apiserver" --version >&2

  printf 'KUBE_APISERVER=%s\nETCD=%s\n' "$DIR/bin/kube-apiserver" "$DIR/bin/etcd" > "$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}

cmd_prepare() {
  versions
  if ready; then cat "$DIR/env"; return 0; fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/$KEY.lock"
  flock 9  # another prepare may be building the same version
  versions --full
  if ! ready; then
    local t0=$SECONDS
    build
    log "built in $((SECONDS - t0)) s: $DIR"
  fi
  cat "$DIR/env"
}

case "${1:-prepare}" in
  prepare) cmd_prepare ;;
  paths) versions; ready || die "not prepared: run $0 prepare"; cat "$DIR/env" ;;
  clean) versions; chmod -R u+w "$DIR" 2>/dev/null || true; rm -rf "$DIR" "$CACHE/$KEY.lock"; log "removed $DIR" ;;
  *) die "usage: $0 {prepare|paths|clean}" ;;
esac
