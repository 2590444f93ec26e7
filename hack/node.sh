#!/usr/bin/env bash
# One real Kubernetes node beside the test bed's kwok nodes: containerd, runc, the CNI bridge and a
# kubelet and kube-proxy built from the control plane's release, and CoreDNS as the cluster DNS
# (hack/build-testbed.sh node). Needs root (mounts,
# network namespaces, iptables) and a running test bed (`make cluster`, or TESTBED_DIR of one).
#   up                 start the node (after `down` of anything a crashed run left); prints its name
#   down               stop every process it started, remove its mounts, rules, bridge and state
#   status             pids and the node's Ready condition
#   import TAG...      copy buildah images into the node's containerd (once per image ID)
#
# The node is labelled kompression.dev/real-node=true and advertises no GPU. Pods reach the host's
# loopback services (the test bed's S3, Prometheus, Pushgateway) at the bridge's address, $GATEWAY,
# through a DNAT to 127.0.0.1. Services are what a cluster makes of them: kube-proxy (iptables mode)
# translates Service addresses (the `kubernetes` Service's goes to the API server on loopback by a
# rule of this script, since loopback cannot be published as an endpoint), and CoreDNS on $GATEWAY
# answers the cluster's names and nothing else (no forwarding). A safety net drops anything the pod
# bridge would forward off the machine (IPv4 and IPv6); it, kube-proxy's first sync and CoreDNS are
# in place before the kubelet starts, so no pod ever sends a packet beyond this host.
# One real node per machine: the bridge, its rules and the image store are shared.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTBED_DIR="$(realpath -m "${TESTBED_DIR:-$ROOT/.testbed}")"
NODE_DIR="$TESTBED_DIR/node"
CACHE="${KOMPRESSION_CACHE:-$HOME/.cache/kompression}"
BIN="$CACHE/bin"
# The image store outlives a node: a product image is imported once per build, not once per run.
STORE="$CACHE/node/containerd"
NODE_NAME="${NODE_NAME:-kompression-node-0}"
BRIDGE=kompression0
POD_SUBNET=10.213.0.0/24
KUBERNETES_SERVICE_IP=10.96.0.1
GATEWAY=10.213.0.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10
CHAIN=KOMPRESSION-NODE
SOCK="$NODE_DIR/containerd.sock"
OWNER="$CACHE/node/owner"  # the NODE_DIR of the node that holds the bridge, rules and image store

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
# Not `ctr images ls | grep -q`: grep stops at the first match, ctr dies of SIGPIPE, pipefail fails.
has_image() { grep -qx -- "$1" <<<"$(ctr_ images ls -q)"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

prerequisites() {
  [ "$(id -u)" -eq 0 ] || die "needs root (mounts, network namespaces, iptables)"
  local missing=()
  for c in containerd containerd-shim-runc-v2 runc ctr iptables ip6tables ip gcc buildah curl; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
  [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (apt-get install containerd runc containernetworking-plugins iptables gcc libc6-dev buildah)"
  for b in kubelet kube-proxy coredns; do
    [ -x "$BIN/$b" ] || die "no $b at $BIN/$b: run hack/build-testbed.sh node"
  done
  [ -f "$TESTBED_DIR/kubeconfig" ] && [ -f "$TESTBED_DIR/ports.json" ] ||
    die "no test bed in $TESTBED_DIR: start one first (make cluster)"
}

apiserver_port() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["apiserver"])' "$TESTBED_DIR/ports.json"; }

# ---- the safety net and the routes to the host ------------------------------------------------

rules() { # add | delete
  local op=$1
  if [ "$op" = add ]; then
    iptables -N "$CHAIN" 2>/dev/null || iptables -F "$CHAIN"
    # Pod to pod (bridged, or routed back onto the bridge after kube-proxy's DNAT) stays inside.
    iptables -A "$CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    # Off the machine: nothing the bridge forwards leaves it, and nothing forwarded reaches it.
    iptables -A "$CHAIN" -i "$BRIDGE" -j DROP
    iptables -A "$CHAIN" -o "$BRIDGE" -j DROP
    iptables -C FORWARD -j "$CHAIN" 2>/dev/null || iptables -I FORWARD 1 -j "$CHAIN"
    ip6tables -N "$CHAIN" 2>/dev/null || ip6tables -F "$CHAIN"
    ip6tables -A "$CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
    ip6tables -A "$CHAIN" -i "$BRIDGE" -j DROP
    ip6tables -A "$CHAIN" -o "$BRIDGE" -j DROP
    ip6tables -C FORWARD -j "$CHAIN" 2>/dev/null || ip6tables -I FORWARD 1 -j "$CHAIN"
    # To the host: the bridge's address is the host's loopback (the test bed's servers), except the
    # ports the node serves there itself (the kubelet's; CoreDNS answers on UDP and TCP 53). The
    # `kubernetes` Service goes to the API server here, before kube-proxy's rules: the API server
    # listens on loopback, an address it may not publish as the Service's endpoint.
    iptables -t nat -N "$CHAIN" 2>/dev/null || iptables -t nat -F "$CHAIN"
    iptables -t nat -A "$CHAIN" -i "$BRIDGE" -p tcp -d "$KUBERNETES_SERVICE_IP" --dport 443 \
      -j DNAT --to-destination "127.0.0.1:$(apiserver_port)"
    iptables -t nat -A "$CHAIN" -i "$BRIDGE" -p tcp -d "$GATEWAY" -m multiport ! --dports 53,"$KUBELET_PORT" \
      -j DNAT --to-destination 127.0.0.1
    iptables -t nat -C PREROUTING -j "$CHAIN" 2>/dev/null || iptables -t nat -I PREROUTING 1 -j "$CHAIN"
  else
    iptables -D FORWARD -j "$CHAIN" 2>/dev/null || true
    iptables -F "$CHAIN" 2>/dev/null && iptables -X "$CHAIN" 2>/dev/null || true
    ip6tables -D FORWARD -j "$CHAIN" 2>/dev/null || true
    ip6tables -F "$CHAIN" 2>/dev/null && ip6tables -X "$CHAIN" 2>/dev/null || true
    iptables -t nat -D PREROUTING -j "$CHAIN" 2>/dev/null || true
    iptables -t nat -F "$CHAIN" 2>/dev/null && iptables -t nat -X "$CHAIN" 2>/dev/null || true
  fi
}

bridge_up() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # A packet for 127.0.0.1 that arrives on the bridge (after the DNAT) is delivered, not dropped as martian.
  sysctl -qw "net.ipv4.conf.$BRIDGE.route_localnet=1"
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1"
}

# ---- containerd -------------------------------------------------------------------------------

containerd_config() {
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$STORE"
state = "$NODE_DIR/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$NODE_DIR/containerd.ttrpc.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The VM grants no CAP_SYS_RESOURCE: lowering oom_score_adj fails and runc dies without this.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
    max_conf_num = 1
EOF
  mkdir -p "$NODE_DIR/cni"
  cat >"$NODE_DIR/cni/10-kompression.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kompression",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$NODE_DIR/cni-ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "$GATEWAY"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

containerd_up() {
  mkdir -p "$STORE" "$NODE_DIR/logs"
  setsid containerd --config "$NODE_DIR/containerd.toml" >>"$NODE_DIR/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/containerd.pid"
  for _ in $(seq 100); do
    ctr_ version >/dev/null 2>&1 && return 0
    alive "$NODE_DIR/containerd.pid" || break
    sleep 0.2
  done
  tail -20 "$NODE_DIR/logs/containerd.log" >&2
  die "containerd did not start (log: $NODE_DIR/logs/containerd.log)"
}

# A crashed run's containers: kill their tasks and delete them before the kubelet sees them.
containers_clear() {
  local c
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
  sleep 0.5
  for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
  for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
}

pause_image() {
  has_image "$PAUSE_IMAGE" && return 0
  log "building $PAUSE_IMAGE from images/pause/pause.c (no registry is reachable)"
  local work="$NODE_DIR/pause" c
  mkdir -p "$work"
  gcc -static -Os -s -o "$work/pause" "$ROOT/images/pause/pause.c"
  c=$(buildah from scratch)
  buildah copy --quiet --chmod 0755 "$c" "$work/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  buildah commit --quiet --rm "$c" "$PAUSE_IMAGE" >/dev/null
  import_image "$PAUSE_IMAGE"
}

import_image() { # tag
  local tag=$1 id stamp
  id=$(buildah inspect --type image --format '{{.FromImageID}}' "$tag" 2>/dev/null) ||
    die "no image $tag in buildah's store: build it first (make images)"
  stamp="$STORE/imported/$(echo "$tag" | tr '/:' '__')"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] && has_image "$tag"; then return 0; fi
  log "importing $tag into the node's containerd"
  local tar="$NODE_DIR/import.tar"
  rm -f "$tar"
  buildah push --quiet "$tag" "docker-archive:$tar:$tag" >/dev/null
  # containerd 1.6.20's unpacker Stats a layer's snapshot, finds it, and its collector may remove it
  # before the next layer is prepared on it (a layer only the build this tag replaces held):
  # "parent snapshot ... does not exist" (containerd/containerd#3787, fixed in a later 1.6). An
  # import again Stats afresh and unpacks the layer, as the issue's retried pulls do.
  local attempt err
  for attempt in 1 2 3; do
    err=$(ctr_ images import --digests=false "$tar" 2>&1 >/dev/null) && break
    if [ "$attempt" -eq 3 ] || ! grep -q 'parent snapshot .* does not exist' <<<"$err"; then
      rm -f "$tar"
      die "importing $tag failed: $err"
    fi
    log "containerd collected a snapshot $tag was being unpacked onto (containerd#3787); importing again"
  done
  rm -f "$tar"
  mkdir -p "$STORE/imported"
  echo "$id" >"$stamp"
}

# The CRI plugin keeps each image's ID (sha256:...) as a reference of its own: once a tag moves to a
# newer build, the old image would live on through it, gigabytes each. Remove the references that no
# tag shares a target with; containerd's collector then frees what only they held.
prune_images() {
  local listing tagged ref digest
  listing=$(ctr_ images ls)
  tagged=$(awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}' <<<"$listing")
  while read -r ref digest; do
    [ -n "$ref" ] || continue
    grep -qxF -- "$digest" <<<"$tagged" || ctr_ images rm --sync "$ref" >/dev/null 2>&1 || true
  done < <(awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' <<<"$listing")
}

# ---- kubelet ----------------------------------------------------------------------------------

node_kubeconfig() {
  # A node identity (system:node:NAME in system:nodes), signed by the test bed's CA, so the Node
  # authorizer and NodeRestriction treat this kubelet as they would any other.
  local pki="$TESTBED_DIR/pki" dir="$NODE_DIR/pki" server
  mkdir -p "$dir"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/kubelet.key" \
    -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out "$dir/kubelet.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/kubelet.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/ext.cnf" -out "$dir/kubelet.crt" 2>/dev/null
  server="https://127.0.0.1:$(apiserver_port)"
  cat >"$NODE_DIR/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: testbed, cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}}]
users: [{name: node, user: {client-certificate: "$dir/kubelet.crt", client-key: "$dir/kubelet.key"}}]
contexts: [{name: node, context: {cluster: testbed, user: node}}]
current-context: node
EOF
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # what name command...: polls the command for 60 s while the process lives
  local what=$1 name=$2
  shift 2
  for _ in $(seq 240); do
    alive "$NODE_DIR/$name.pid" || break
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  tail -20 "$NODE_DIR/logs/$name.log" >&2
  die "$what did not come up (log: $NODE_DIR/logs/$name.log)"
}

kube_proxy_up() {
  # Every Service address is translated on this host before a pod can start. masqueradeAll: a pod
  # that reaches a Service whose endpoint sits on the same bridge gets the replies back through the
  # host, with or without br_netfilter. The conntrack sysctls stay as they are (the VM refuses them).
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$TESTBED_DIR/kubeconfig"}
hostnameOverride: $NODE_NAME
# The node's primary address. The kubelet creates the Node object only later: kube-proxy waits 30 s
# for it, then goes on with this address (a pod cannot start before that, nor before the first sync).
bindAddress: $GATEWAY
mode: iptables
clusterCIDR: $POD_SUBNET
iptables: {masqueradeAll: true, syncPeriod: 30s, minSyncPeriod: 0s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
nodePortAddresses: ["$GATEWAY/32"]
healthzBindAddress: "127.0.0.1:$(free_port)"
metricsBindAddress: "127.0.0.1:$(free_port)"
EOF
  setsid "$BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --v=1 \
    >>"$NODE_DIR/logs/kube-proxy.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/kube-proxy.pid"
  wait_for kube-proxy kube-proxy kube_proxy_synced
}

# Synced once a full sync has written the chain's last rule, the jump to the node ports.
kube_proxy_synced() { iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q -- '-j KUBE-NODEPORTS'; }

coredns_up() {
  # The cluster DNS: the names of Services and pods, from the API server, on the bridge's address
  # only. With no `forward` plugin a name outside the cluster's zones is never sent on.
  local ready
  ready=$(free_port)
  cat >"$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $GATEWAY
    errors
    ready 127.0.0.1:$ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $TESTBED_DIR/kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  setsid "$BIN/coredns" -conf "$NODE_DIR/Corefile" >>"$NODE_DIR/logs/coredns.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/coredns.pid"
  # `ready` answers 200 once the kubernetes plugin has listed Services and EndpointSlices.
  wait_for CoreDNS coredns curl -fsS "http://127.0.0.1:$ready/ready"
}

kubelet_up() {
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
# The VM has hybrid (v1) cgroups and no systemd-managed slices for pods.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# The bridge's address is the node's: a host address (kubelet refuses loopback) that no packet
# leaves the machine from. The API server reaches it from the host; pods' packets to it are
# DNATed to loopback before they could reach this port.
address: $GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzPort: 0
# Only the API server (on this host) talks to this port, for logs and exec.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
# Never evict or garbage-collect the imported images: they cannot be pulled back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors, not percentages: on a shared disk that image builds fill and free again, 1% of a
# large disk once tainted the node with DiskPressure and had the kubelet delete the imported images.
evictionHard: {memory.available: "100Mi", nodefs.available: "512Mi", imagefs.available: "512Mi"}
maxPods: 16
# The pods' resolver is CoreDNS on the bridge (the cluster's names only); the host's is off the
# machine and never theirs. Pods address the test bed's servers by IP ($GATEWAY).
resolvConf: ""
clusterDNS: [$GATEWAY]
clusterDomain: cluster.local
serializeImagePulls: false
EOF
  setsid "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$NODE_DIR/kubelet" --cert-dir "$NODE_DIR/kubelet-pki" --hostname-override "$NODE_NAME" \
    --node-ip "$GATEWAY" --node-labels "kompression.dev/real-node=true" --v=1 \
    >>"$NODE_DIR/logs/kubelet.log" 2>&1 </dev/null &
  echo $! >"$NODE_DIR/kubelet.pid"
  local kubectl=("$BIN/kubectl" --kubeconfig "$TESTBED_DIR/kubeconfig")
  for _ in $(seq 120); do
    alive "$NODE_DIR/kubelet.pid" || break
    if [ "$("${kubectl[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
      return 0
    fi
    sleep 0.5
  done
  tail -20 "$NODE_DIR/logs/kubelet.log" >&2
  die "node $NODE_NAME did not become Ready (log: $NODE_DIR/logs/kubelet.log)"
}

# ---- lifecycle --------------------------------------------------------------------------------

# Another test bed's node, still running: its bridge, rules and store are not ours to touch.
held_elsewhere() {
  local owner
  owner=$(cat "$OWNER" 2>/dev/null) || return 1
  [ "$owner" != "$NODE_DIR" ] && alive "$owner/containerd.pid"
}

stop_pidfile() { # pidfile
  alive "$1" || { rm -f "$1"; return 0; }
  local pid
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

down() {
  [ "$(id -u)" -eq 0 ] || { [ -d "$NODE_DIR" ] && log "not root: cannot stop the node in $NODE_DIR"; return 0; }
  stop_pidfile "$NODE_DIR/kubelet.pid"
  stop_pidfile "$NODE_DIR/coredns.pid"
  stop_pidfile "$NODE_DIR/kube-proxy.pid"
  if alive "$NODE_DIR/containerd.pid"; then containers_clear; fi
  stop_pidfile "$NODE_DIR/containerd.pid"
  # runc's shims outlive containerd by design; these are the ones started for this node's socket.
  local pid
  for pid in $(grep -l -a -F -- "$SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts under the node's directories: pod volumes, sandboxes' network namespaces, rootfs overlays.
  local m
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^$NODE_DIR/" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if ! held_elsewhere; then
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^$STORE/" | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
    rules delete
    # kube-proxy's own chains (KUBE-SERVICES, KUBE-FORWARD, ...), which it leaves behind by design.
    if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$OWNER"
  fi
  if [ -f "$TESTBED_DIR/kubeconfig" ] && [ -x "$BIN/kubectl" ]; then
    timeout 10 "$BIN/kubectl" --kubeconfig "$TESTBED_DIR/kubeconfig" delete node "$NODE_NAME" --ignore-not-found \
      --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$NODE_DIR"
}

up() {
  prerequisites
  held_elsewhere && die "a real node already runs for $(cat "$OWNER") (one per machine): stop it first"
  down
  mkdir -p "$NODE_DIR/logs" "$(dirname "$OWNER")"
  echo "$NODE_DIR" >"$OWNER"
  KUBELET_PORT=$(free_port)
  rules add
  bridge_up
  containerd_config
  containerd_up
  containers_clear
  pause_image
  node_kubeconfig
  kube_proxy_up
  coredns_up
  kubelet_up
  echo "$NODE_NAME"
}

status() {
  for c in containerd kube-proxy coredns kubelet; do
    if alive "$NODE_DIR/$c.pid"; then echo "$c: pid $(cat "$NODE_DIR/$c.pid")"; else echo "$c: not running"; fi
  done
  [ -f "$TESTBED_DIR/kubeconfig" ] && "$BIN/kubectl" --kubeconfig "$TESTBED_DIR/kubeconfig" get node "$NODE_NAME" 2>&1 || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  import) shift; [ "$(id -u)" -eq 0 ] || die "needs root"; alive "$NODE_DIR/containerd.pid" || die "the node is not up"
    for t in "$@"; do import_image "$t"; done
    prune_images ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
