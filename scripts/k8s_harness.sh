#!/usr/bin/env bash
# A real Kubernetes 1.20 control plane and node, built from Debian bookworm's `kubernetes` source package
# with Debian's golang-1.19-go, cached outside the checkout for the Kubernetes test tiers:
#   kube-apiserver, kubelet, kube-scheduler, kube-controller-manager  one `make`, CGO_ENABLED=0, GOPROXY=off
#   kubectl   from the kubernetes-client .deb (dpkg -x; never installed over another kubectl)
#   etcd      from the etcd-server .deb (dpkg -x; never installed as a service)
#   pause     Kubernetes' own build/pause/linux/pause.c (gcc -static), imported offline as a labeled image
#
#   scripts/k8s_harness.sh prepare [all|control-plane]   build/unpack once, then print NAME=path lines
#                          (control-plane: only what the test-kubelet tier needs, etcd + kube-apiserver)
#   scripts/k8s_harness.sh paths     print the cached paths (exit 1 if not prepared)
#   scripts/k8s_harness.sh clean     remove this Debian version's cached build (and the pause image)
#
# Cache: ${HARBOR_RAY_CACHE:-$HOME/.cache/harbor_ray}/k8s-<kubernetes version>-etcd-<etcd version>/
# with bin/* and env (the lines printed by `prepare`). A second `prepare` only checks these files (and
# re-imports the pause image from bin/pause if someone removed it). Only missing binaries are built, so a
# cache made by an older harness (kube-apiserver only) is completed, not rebuilt. The Debian archive's
# address is read from this machine's apt sources.
set -euo pipefail

CACHE="${HARBOR_RAY_CACHE:-$HOME/.cache/harbor_ray}"
GO_PKG=golang-1.19-go
GO_ROOT=/usr/lib/go-1.19
NEEDED_PKGS=("$GO_PKG" rsync make ca-certificates openssl curl gcc libc6-dev patch)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER_CMDS=(kube-apiserver kubelet kube-scheduler kube-controller-manager)
# labels of every image of ours (harbor_ray/labels.py: KIND, RUN); `clean` and leak checks select on them
PAUSE_LABELS=('harbor-ray/kind=image' 'harbor-run=base')

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

pause_image() { echo "harbor-ray/pause:3.2-${KEY#k8s-}" | cut -c1-128; }

wanted() {  # the binaries a scope needs
  case "$1" in
    control-plane) echo etcd kube-apiserver ;;
    all) echo etcd kubectl pause "${SERVER_CMDS[@]}" ;;
    *) die "prepare: unknown scope '$1' (use all or control-plane)" ;;
  esac
}

missing() { local b; for b in $(wanted "$1"); do [ -x "$DIR/bin/$b" ] || echo "$b"; done; }

ready() { [ -z "$(missing "$1")" ] && [ -s "$DIR/env" ] && grep -q '^KUBE_APISERVER=' "$DIR/env"; }

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

lacks_cap_sys_resource() {  # CapEff bit 24: without it runc cannot set a negative oom_score_adj
  local eff; eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
  [ $(( (16#$eff >> 24) & 1 )) = 0 ]
}

build() {  # builds what `missing all` lists (or `missing control-plane`, with scope control-plane)
  local scope="$1" work="$DIR/work" todo cmds=() b
  todo=" $(missing "$scope" | tr '\n' ' ') "
  rm -rf "$work"; mkdir -p "$work" "$DIR/bin"
  install_packages

  if [[ "$todo" == *" etcd "* ]]; then
    log "etcd: unpacking etcd-server=$ETCD_VER with dpkg -x"
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "etcd-server=$ETCD_VER" >&2)
    dpkg -x "$work"/etcd-server_*.deb "$work/etcd-root"
    install -m 0755 "$work/etcd-root/usr/bin/etcd" "$DIR/bin/etcd"
  fi
  if [[ "$todo" == *" kubectl "* ]]; then
    log "kubectl: unpacking kubernetes-client=$K8S_VER with dpkg -x"
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "kubernetes-client=$K8S_VER" >&2)
    dpkg -x "$work"/kubernetes-client_*.deb "$work/kc-root"
    install -m 0755 "$work/kc-root/usr/bin/kubectl" "$DIR/bin/kubectl"
  fi
  for b in "${SERVER_CMDS[@]}"; do [[ "$todo" == *" $b "* ]] && cmds+=("cmd/$b"); done
  if [ "${#cmds[@]}" -gt 0 ] || [[ "$todo" == *" pause "* ]]; then
    log "kubernetes: downloading source package $K8S_VER (deb-src from this machine's apt sources)"
    private_apt_opts "$work/apt"
    apt-get "${APT_OPTS[@]}" update -qq >&2
    # A binNMU (+bN) of the binary package is built from the unsuffixed source version.
    (cd "$work" && apt-get "${APT_OPTS[@]}" source -qq --download-only "kubernetes=${K8S_VER%+b[0-9]*}" >&2)
    local orig
    orig="$(ls "$work"/kubernetes_*.orig.tar.* | head -n1)"
    mkdir -p "$work/src"
    tar -xf "$orig" -C "$work/src" --strip-components=1
  fi
  if [[ "$todo" == *" pause "* ]]; then
    gcc -Os -static -DVERSION=harbor-ray -o "$work/pause" "$work/src/build/pause/linux/pause.c" && strip "$work/pause"
    install -m 0755 "$work/pause" "$DIR/bin/pause"
  fi
  local patched=no
  if [[ " ${cmds[*]} " == *" cmd/kubelet "* ]] && lacks_cap_sys_resource; then
    patched=yes
    log "root lacks CAP_SYS_RESOURCE here: patching the kubelet's dockershim to clamp negative oom_score_adj to 0 (scripts/k8s/oom-clamp.patch)"
    patch -d "$work/src" -p0 --quiet < "$HERE/k8s/oom-clamp.patch"
  fi
  if [ "${#cmds[@]}" -gt 0 ]; then
    log "kubernetes: make WHAT=\"${cmds[*]}\" (kubelet alone is ~7 min on 2 idle cores; log: $work/build.log)"
    (
      cd "$work/src"
      export PATH="$GO_ROOT/bin:$PATH" GOROOT="$GO_ROOT" CGO_ENABLED=0 GOPROXY=off GOFLAGS= HOME="$work/home"
      mkdir -p .go/src/k8s.io "$HOME"
      [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
      export GOPATH="$PWD/.go"
      make WHAT="${cmds[*]}" > "$work/build.log" 2>&1
    ) || { tail -n 30 "$work/build.log" >&2; die "build of ${cmds[*]} failed (log: $work/build.log)"; }
    for b in "${cmds[@]}"; do
      install -m 0755 "$work/src/_output/bin/${b#cmd/}" "$DIR/bin/${b#cmd/}"
      "$DIR/bin/${b#cmd/}" --version >&2
    done
    [[ " ${cmds[*]} " == *" cmd/kubelet "* ]] && echo "$patched" > "$DIR/bin/kubelet.oom-clamped"
  fi
  write_env
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}

write_env() {
  {
    printf 'KUBE_APISERVER=%s\nETCD=%s\n' "$DIR/bin/kube-apiserver" "$DIR/bin/etcd"
    local b
    for b in kubelet kube-scheduler kube-controller-manager kubectl; do
      [ -x "$DIR/bin/$b" ] && printf '%s=%s\n' "$(echo "$b" | tr 'a-z-' 'A-Z_')" "$DIR/bin/$b"
    done
    [ -x "$DIR/bin/pause" ] && printf 'PAUSE_IMAGE=%s\n' "$(pause_image)"
    [ -s "$DIR/bin/kubelet.oom-clamped" ] && printf 'KUBELET_OOM_CLAMPED=%s\n' "$(cat "$DIR/bin/kubelet.oom-clamped")"
    true
  } > "$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
}

ensure_pause_image() {  # a docker image is not a file in the cache: someone may have removed it
  [ -x "$DIR/bin/pause" ] || return 0
  local img w; img="$(pause_image)"
  docker image inspect "$img" >/dev/null 2>&1 && return 0
  w="$(mktemp -d)"; mkdir -p "$w/root"; cp "$DIR/bin/pause" "$w/root/pause"
  tar -C "$w/root" -cf "$w/pause.tar" pause
  local changes=(-c 'ENTRYPOINT ["/pause"]') l
  for l in "${PAUSE_LABELS[@]}"; do changes+=(-c "LABEL $l"); done
  docker import "${changes[@]}" "$w/pause.tar" "$img" >/dev/null || { rm -rf "$w"; die "docker import of $img failed"; }
  rm -rf "$w"; log "imported $img (Kubernetes' build/pause, offline)"
}

cmd_prepare() {
  local scope="${1:-all}"
  wanted "$scope" >/dev/null
  versions
  if ! ready "$scope"; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/$KEY.lock"
    flock 9  # another prepare may be building the same version
    versions --full
    if ! ready "$scope"; then
      local t0=$SECONDS todo
      todo="$(missing "$scope" | tr '\n' ' ')"
      build "$scope"
      log "built ${todo% } in $((SECONDS - t0)) s: $DIR"
    fi
  fi
  [ "$scope" = all ] && ensure_pause_image
  cat "$DIR/env"
}

case "${1:-prepare}" in
  prepare) cmd_prepare "${2:-all}" ;;
  paths) versions; ready all || die "not prepared: run $0 prepare"; cat "$DIR/env" ;;
  clean)
    versions
    docker image rm "$(pause_image)" >/dev/null 2>&1 || true
    chmod -R u+w "$DIR" 2>/dev/null || true; rm -rf "$DIR" "$CACHE/$KEY.lock"; log "removed $DIR" ;;
  *) die "usage: $0 {prepare [all|control-plane]|paths|clean}" ;;
esac
