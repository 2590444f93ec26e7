#!/usr/bin/env bash
# Front door to the local test bed (see tests/testbed/README.md). Subcommands:
#   deps         install Debian's prometheus, pushgateway, lua5.4 and npm (if missing) and build the binaries
#   up | down | status   the Kubernetes control plane + kwok nodes, state in $TESTBED_DIR
#   s3           moto S3 server in the foreground        (S3_PORT, default 9000)
#   gcs          fake-gcs-server in the foreground       (GCS_PORT, default 4443)
#   azurite      Azurite blob service in the foreground  (AZURITE_PORT, default 10000)
#   prometheus   Prometheus in the foreground            (PROM_PORT 9090, PROM_TARGETS a,b)
#   pushgateway  Pushgateway in the foreground           (PUSHGATEWAY_PORT 9091)
#   helm         build helm if needed and print its path
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
TESTBED_DIR="${TESTBED_DIR:-$ROOT/.testbed}"
BIN="${KOMPRESSION_CACHE:-$HOME/.cache/kompression}/bin"
export TESTBED_DIR

die() { echo "testbed: $*" >&2; exit 1; }
[ -x "$PYTHON" ] || die "no Python at $PYTHON; create the venv first (uv venv && uv pip install -e '.[dev]')"
py() { PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$@"; }

deps() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v lua5.4 >/dev/null || missing+=(lua5.4)  # runs the Argo CD health check in tests/gitops
  command -v npm >/dev/null || missing+=(nodejs npm)   # installs Azurite, the Azure Storage emulator
  # The product images, built and run daemonless (hack/build-images.sh, tests/images).
  local c
  for c in buildah podman mmdebstrap; do command -v "$c" >/dev/null || missing+=("$c"); done
  # The real node (hack/node.sh): its runtime, the CNI bridge, iptables, and gcc for the pause binary.
  for c in containerd runc iptables curl; do command -v "$c" >/dev/null || missing+=("$c"); done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  "$ROOT/hack/build-testbed.sh"
}

prometheus_fg() {
  local dir="$TESTBED_DIR/prometheus" port="${PROM_PORT:-9090}" targets="${PROM_TARGETS:-}"
  command -v prometheus >/dev/null || die "prometheus missing; run: $0 deps"
  mkdir -p "$dir"
  {
    printf 'global: {scrape_interval: 5s, evaluation_interval: 5s}\nscrape_configs:\n'
    printf -- '- job_name: prometheus\n  static_configs: [{targets: ["127.0.0.1:%s"]}]\n' "$port"
    if [ -n "$targets" ]; then
      printf -- '- job_name: targets\n  honor_labels: true\n  static_configs: [{targets: [%s]}]\n' \
        "$(echo "$targets" | sed 's/[^,][^,]*/"&"/g')"
    fi
  } >"$dir/prometheus.yml"
  echo "Prometheus on http://127.0.0.1:$port (config $dir/prometheus.yml); Ctrl-C stops it"
  exec prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle
}

pushgateway_fg() {
  local port="${PUSHGATEWAY_PORT:-9091}"
  command -v prometheus-pushgateway >/dev/null || die "prometheus-pushgateway missing; run: $0 deps"
  echo "Pushgateway on http://127.0.0.1:$port; Ctrl-C stops it"
  exec prometheus-pushgateway --web.listen-address="127.0.0.1:$port" --web.enable-admin-api
}

case "${1:-}" in
  deps) deps ;;
  up) "$ROOT/hack/build-testbed.sh"; py -m testbed.cluster up --dir "$TESTBED_DIR" ;;
  # The real node (hack/node.sh) first: its kubelet must not outlive the API server it reports to.
  down) "$ROOT/hack/node.sh" down; py -m testbed.cluster down --dir "$TESTBED_DIR" ;;
  status) py -m testbed.cluster status --dir "$TESTBED_DIR" ;;
  s3) exec env PYTHONPATH="$ROOT/tests" S3_PORT="${S3_PORT:-9000}" "$PYTHON" -m testbed.s3 ;;
  gcs) "$ROOT/hack/build-testbed.sh" fake_gcs
    exec env PYTHONPATH="$ROOT/tests" GCS_PORT="${GCS_PORT:-4443}" "$PYTHON" -m testbed.gcs ;;
  azurite) "$ROOT/hack/build-testbed.sh" azurite
    exec env PYTHONPATH="$ROOT/tests" AZURITE_PORT="${AZURITE_PORT:-10000}" "$PYTHON" -m testbed.azurite ;;
  prometheus) prometheus_fg ;;
  pushgateway) pushgateway_fg ;;
  helm) "$ROOT/hack/build-testbed.sh" helm; echo "$BIN/helm" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
