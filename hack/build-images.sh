#!/usr/bin/env bash
# Builds the product images daemonless with buildah (no Docker engine), tagged with the version in
# pyproject.toml:
#   operator     images/operator      -> $IMAGE_PREFIX/operator:$VERSION
#   worker-cpu   images/worker-cpu    -> $IMAGE_PREFIX/worker:$VERSION-cpu   (Python base, torch from PyPI)
#   worker-llm   images/worker-llm    -> $IMAGE_PREFIX/worker-llm:$VERSION
#   worker       images/worker        -> $IMAGE_PREFIX/worker:$VERSION       (NVIDIA base; not in the default
#                                        set: it needs nvcr.io, and its base alone is ~20 GB)
# Usage: hack/build-images.sh [NAME...]   (default: operator worker-cpu worker-llm; `base`: the Python base only)
#
# The Python base is a build argument whose default is what users pull (python:3.12.11-slim-bookworm).
# When that image is neither present nor pullable (no registry reachable), the script builds a
# stand-in from Debian bookworm with mmdebstrap: the same Debian release, with Debian's Python 3.11
# (bookworm has no 3.12), and says so. PYTHON_BASE=standin forces the stand-in.
#
# Builds are cached by their inputs: the sha256 of the Dockerfile, pyproject.toml, README.md,
# operator/ and the base image's ID is the label dev.kompression.inputs; an image whose label
# matches is not rebuilt, so a second run returns in seconds. The workers' dependencies (torch and
# the rest: gigabytes) are an image of their own, the Dockerfile's `deps` stage, cached by that
# stage's lines, pyproject.toml and the requirement helpers alone: a change to Kompression's code
# rebuilds only the small layer that holds it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
IMAGE_PREFIX="${IMAGE_PREFIX:-ghcr.io/kompression}"
PYTHON_BASE="${PYTHON_BASE:-python:3.12.11-slim-bookworm}"
STANDIN="localhost/kompression/python-base:bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${KOMPRESSION_CACHE:-$HOME/.cache/kompression}/images"
mkdir -p "$CACHE"

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v buildah >/dev/null || die "buildah missing: apt-get install buildah (or see docs/install.md)"

# RUN steps reach the package index through the host's network namespace. Where the host's pip
# trusts a CA bundle of its own (a proxy's), the same bundle and pip config go into each RUN step;
# nothing of them is committed to an image.
RUN_ARGS=(--network host)
[ -f /etc/pip.conf ] && RUN_ARGS+=(-v /etc/pip.conf:/etc/pip.conf:ro)
ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
[ -n "$ca" ] && [ -f "$ca" ] && RUN_ARGS+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
# VMs with hybrid cgroups (v1) refuse crun: buildah's cgroupfs manager and runc work there.
export BUILDAH_RUNTIME="${BUILDAH_RUNTIME:-runc}"

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }
image_label() { buildah inspect --type image --format "{{index .ImageAnnotations \"$2\"}}{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null; }

standin_base() {
  if [ -n "$(image_id "$STANDIN")" ]; then echo "$STANDIN"; return; fi
  command -v mmdebstrap >/dev/null || die "no Python base and no mmdebstrap to build a stand-in: apt-get install mmdebstrap"
  log "building the stand-in base $STANDIN from Debian bookworm ($DEBIAN_MIRROR) with mmdebstrap"
  local tar="$CACHE/python-base-bookworm.tar"
  # Documentation, manuals and translations stay out, as in the slim image it stands in for.
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$tar" "deb $DEBIAN_MIRROR bookworm main" "deb $DEBIAN_MIRROR bookworm-updates main" </dev/null >&2
  local ctr
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$tar" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --label org.opencontainers.image.description="Stand-in for python:3.12-slim-bookworm: Debian bookworm minbase with python3" \
    --cmd python3 "$ctr"
  buildah commit --quiet --rm "$ctr" "$STANDIN" >/dev/null
  rm -f "$tar"
  echo "$STANDIN"
}

python_base() {
  if [ "$PYTHON_BASE" = standin ]; then standin_base; return; fi
  if [ -n "$(image_id "$PYTHON_BASE")" ]; then echo "$PYTHON_BASE"; return; fi
  if timeout 120 buildah pull --quiet "docker.io/library/$PYTHON_BASE" >/dev/null 2>&1 ||
     timeout 120 buildah pull --quiet "$PYTHON_BASE" >/dev/null 2>&1; then
    echo "$PYTHON_BASE"; return
  fi
  log "cannot pull $PYTHON_BASE (no registry reachable?): using a stand-in base instead"
  standin_base
}

inputs_hash() { # base_id path...
  local base=$1
  shift
  (
    cd "$ROOT"
    printf '%s\n%s\n' "$base" "$VERSION"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --exclude=__pycache__ --exclude='*.egg-info' \
      -cf - "$@"
  ) | sha256sum | cut -c1-64
}

build() { # tag hash log_name buildah-build-args...: builds unless the image's inputs label matches
  local tag=$1 hash=$2 name=$3 previous start=$SECONDS
  shift 3
  if [ "$(image_label "$tag" dev.kompression.inputs)" = "$hash" ]; then
    log "$tag is up to date (inputs $hash)"
    return
  fi
  log "building $tag (log: $CACHE/$name.log)"
  previous=$(image_id "$tag" || true)
  # No --layers: the cache is the inputs' hash (and pip's cache mount), and a multi-gigabyte build
  # stage kept per build fills a CI machine's disk.
  if ! buildah --cgroup-manager cgroupfs build "${RUN_ARGS[@]}" "$@" \
      --build-arg "VERSION=$VERSION" --label "dev.kompression.inputs=$hash" -t "$tag" "$ROOT" >"$CACHE/$name.log" 2>&1; then
    tail -30 "$CACHE/$name.log" >&2
    die "building $tag failed (full log: $CACHE/$name.log)"
  fi
  # The image this build replaced is untagged now: nothing else refers to it.
  if [ -n "$previous" ] && [ "$previous" != "$(image_id "$tag")" ]; then buildah rmi "$previous" >/dev/null 2>&1 || true; fi
  log "built $tag in $((SECONDS - start)) s: $(buildah images --format '{{.Size}}' "$tag" 2>/dev/null || true)"
}

deps_image() { # name worker_tag base_arg...: the worker's dependency stage as an image of its own; prints its tag
  local name=$1 worker=$2 dockerfile="images/$1/Dockerfile" tag="localhost/kompression/$1-deps:$VERSION" hash helpers=()
  shift 2
  helpers=(images/extra-requirements.py)
  [ -f "$ROOT/images/$name/cpu-requirements.py" ] && helpers+=("images/$name/cpu-requirements.py")
  # The stage's own lines (and the ARGs before the first FROM), not the whole Dockerfile: an edit to
  # the final stage must not rebuild gigabytes of dependencies.
  hash=$({
    awk '/^FROM /{in_deps = / AS deps$/} !seen_from || in_deps {print} /^FROM /{seen_from = 1}' "$ROOT/$dockerfile"
    inputs_hash "$(image_id "${1#--build-arg=PYTHON_BASE=}")" pyproject.toml "${helpers[@]}"
  } | sha256sum | cut -c1-64)
  if [ "$(image_label "$tag" dev.kompression.inputs)" != "$hash" ]; then
    # Gigabytes each: the worker image standing on the old dependencies, and they, go before the
    # build rather than after it, so that a rebuild needs room for one copy of them, not two.
    buildah rmi "$worker" "$tag" >/dev/null 2>&1 || true
  fi
  build "$tag" "$hash" "$name-deps" "$@" --target deps -f "$ROOT/$dockerfile" >&2
  echo "$tag"
}

build_one() { # name
  local name=$1 dockerfile tag base_args=() base_id
  dockerfile="images/$name/Dockerfile"
  [ -f "$ROOT/$dockerfile" ] || die "no $dockerfile"
  case "$name" in
    operator) tag="$IMAGE_PREFIX/operator:$VERSION" ;;
    worker-cpu) tag="$IMAGE_PREFIX/worker:$VERSION-cpu" ;;
    worker-llm) tag="$IMAGE_PREFIX/worker-llm:$VERSION" ;;
    worker) tag="$IMAGE_PREFIX/worker:$VERSION" ;;
    *) die "unknown image $name" ;;
  esac
  if [ "$name" = worker ]; then
    # Its RUN has a pipe under SHELL pipefail, which only the docker image format keeps.
    base_id=nvidia
    base_args=(--format docker)
  else
    local base
    base=$(python_base)
    base_args=("--build-arg=PYTHON_BASE=$base")
    base_id=$(image_id "$base")
  fi
  case "$name" in
    worker-cpu | worker-llm)
      local deps
      deps=$(deps_image "$name" "$tag" "${base_args[@]}")
      base_args+=("--build-arg=DEPS=$deps")
      base_id="$base_id $(image_id "$deps")"
      ;;
  esac
  build "$tag" "$(inputs_hash "$base_id" "$(dirname "$dockerfile")" pyproject.toml README.md operator)" "$name" \
    "${base_args[@]}" -f "$ROOT/$dockerfile" >&2
  echo "$tag"
}

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(operator worker-cpu worker-llm)
for n in "${names[@]}"; do
  if [ "$n" = base ]; then python_base; else build_one "$n"; fi
done
# Whatever an interrupted or failed build left untagged.
buildah rmi --prune >/dev/null 2>&1 || true
