#!/usr/bin/env bash
# Builds the local Kubernetes test bed's binaries from their official Go modules and caches
# them outside the checkout, so a fresh clone (and CI) reuses them. Each binary is built once
# per pinned version; a second run returns in well under a second.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
# 3.36+ needs Node 22; 3.35 runs on the Node 18/20 that Debian and Ubuntu ship.
AZURITE_VERSION="${AZURITE_VERSION:-3.35.0}"

CACHE="${KOMPRESSION_CACHE:-$HOME/.cache/kompression}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/logs"
export GOFLAGS="${GOFLAGS:--mod=mod}"
export CGO_ENABLED=0

log() { printf '[build-testbed] %s\n' "$*" >&2; }

stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

build_k8s() {
  local wanted=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=()
  for b in "${wanted[@]}"; do stamp_ok "$b" "$K8S_VERSION" || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} from k8s.io/kubernetes@$K8S_VERSION (first time: many minutes)"
  local work="$CACHE/src/k8s-$K8S_VERSION"
  mkdir -p "$work"
  local staging="v0.${K8S_VERSION#v1.}"
  (
    cd "$work"
    [ -f go.mod ] || go mod init kompression.dev/testbed >/dev/null 2>&1
    # k8s.io/kubernetes requires every staging module at v0.0.0 and replaces it with a local
    # path; a consumer must map each one to the published release of the same minor.
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/tmp/k8s-mod.json
    local gomod
    gomod=$(python3 -c 'import json,sys; print(json.load(open("/tmp/k8s-mod.json"))["GoMod"])')
    local replaces
    replaces=$(grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk '{print $1}' | sort -u)
    for m in $replaces; do go mod edit -replace "$m=$m@$staging"; done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    printf 'package tools\n\nimport (\n' >tools.go
    for b in "${missing[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b" >>tools.go; done
    printf ')\n' >>tools.go
    sed -i '1i //go:build tools' tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    for b in "${missing[@]}"; do
      log "go build $b"
      go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" -o "$BIN/$b" "k8s.io/kubernetes/cmd/$b"
      stamp "$b" "$K8S_VERSION"
    done
  )
}

build_node() {
  # The real node's kubelet and kube-proxy, from the same k8s.io/kubernetes release as the control
  # plane. A work directory of its own (build_k8s may be running in the other), sharing Go's build
  # cache, so the packages the apiserver already compiled are not compiled again (about 4 minutes
  # then). CoreDNS, the cluster DNS the pods resolve Service names with, is its own Go module.
  build_go_module coredns github.com/coredns/coredns github.com/coredns/coredns "$COREDNS_VERSION"
  local wanted=(kubelet kube-proxy) missing=()
  for b in "${wanted[@]}"; do stamp_ok "$b" "$K8S_VERSION" || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} from k8s.io/kubernetes@$K8S_VERSION"
  local work="$CACHE/src/k8s-node-$K8S_VERSION" staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$work"
  (
    cd "$work"
    [ -f go.mod ] || go mod init kompression.dev/testbed-node >/dev/null 2>&1
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$work/k8s-mod.json"
    local gomod
    gomod=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' "$work/k8s-mod.json")
    for m in $(grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk '{print $1}' | sort -u); do
      go mod edit -replace "$m=$m@$staging"
    done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport (\n' >tools.go
    for b in "${wanted[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b" >>tools.go; done
    printf ')\n' >>tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    for b in "${missing[@]}"; do
      log "go build $b"
      go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" -o "$BIN/$b" "k8s.io/kubernetes/cmd/$b"
      stamp "$b" "$K8S_VERSION"
    done
  )
}

build_go_module() { # name module package version
  # Builds inside a throwaway wrapper module: `go install pkg@version` refuses modules whose
  # go.mod carries replace directives (etcd's does).
  local name=$1 module=$2 pkg=$3 version=$4
  stamp_ok "$name" "$version" && return 0
  log "go build $pkg ($module@$version)"
  local work="$CACHE/src/$name-$version"
  mkdir -p "$work"
  (
    cd "$work"
    [ -f go.mod ] || go mod init "kompression.dev/testbed-$name" >/dev/null 2>&1
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >tools.go
    go get "$module@$version" >/dev/null 2>&1 || go get "$module@$version"
    go mod tidy -e >/dev/null 2>&1 || true
    go build -trimpath -ldflags "-s -w" -o "$BIN/$name" "$pkg"
  )
  stamp "$name" "$version"
}

build_etcd() { build_go_module etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 "$ETCD_VERSION"; }
build_kwok() { build_go_module kwok sigs.k8s.io/kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"; }
build_helm() { build_go_module helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"; }
# Lints .github/workflows (tests/ci/test_workflows.py).
build_actionlint() { build_go_module actionlint github.com/rhysd/actionlint github.com/rhysd/actionlint/cmd/actionlint "$ACTIONLINT_VERSION"; }
build_fake_gcs() {
  build_go_module fake-gcs-server github.com/fsouza/fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION"
}

# Kueue's manager, and its CRDs and webhook configurations from the same module's source (the
# test bed's fixture, tests/testbed/kueue.py, applies them), copied next to the binaries: CI
# caches ~/.cache/kompression but not Go's module cache.
build_kueue() {
  local share="$CACHE/kueue/$KUEUE_VERSION"
  if [ ! -f "$share/webhook/manifests.yaml" ]; then
    local dir
    dir=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    mkdir -p "$share/crd" "$share/webhook"
    cp "$dir"/config/components/crd/bases/*.yaml "$share/crd/"
    cp "$dir/config/components/webhook/manifests.yaml" "$share/webhook/"
    chmod -R u+w "$share"
  fi
  build_go_module kueue sigs.k8s.io/kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION"
}

build_azurite() {
  # The Azure Storage emulator is an npm package; it lives in its own prefix next to bin/.
  local prefix="$CACHE/azurite"
  [ -x "$prefix/node_modules/.bin/azurite-blob" ] && [ "$(cat "$prefix/.version" 2>/dev/null)" = "$AZURITE_VERSION" ] &&
    return 0
  command -v npm >/dev/null || { log "npm missing: install Node.js (apt-get install nodejs npm)"; return 1; }
  log "npm install azurite@$AZURITE_VERSION into $prefix"
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
  echo "$AZURITE_VERSION" >"$prefix/.version"
}

targets=("$@")
# `node` (the real node's kubelet, kube-proxy and CoreDNS) is built only when asked: `make node` and its tests need root.
[ ${#targets[@]} -eq 0 ] && targets=(etcd kwok helm fake_gcs azurite actionlint k8s kueue)
for t in "${targets[@]}"; do "build_$t"; done
log "binaries ready in $BIN"
