#!/usr/bin/env bash
# DNS benchmark: wharf's DNS interface beside NSD (an authoritative server from Debian) in the
# same run, with dnsperf (Debian) as the load generator.
#
# The catalog: 100 services x 10 instances (one instance of every service on each of 10
# nodes), registered through wharf's HTTP API. NSD serves the same A and SRV records (and the
# SRV targets' A records) from a generated zone file. The query mix is the A and the SRV
# question of every service (200 names), EDNS on (4096 bytes), TTL 0 on both sides.
#
# Each server is pinned to CPU 0 (`taskset -c 0`), dnsperf to the other CPUs. Two runs per
# server: saturating (the queries per second one core sustains) and a fixed load (latency
# at a rate both sustain).
#
# Usage: bench/dns.sh [SECONDS_PER_RUN] (default 20). Needs root for apt-get if dnsperf or
# nsd are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-20}"
FIXED_QPS="${FIXED_QPS:-5000}"
SERVICES=100
INSTANCES=10

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v nsd >/dev/null || [[ -x /usr/sbin/nsd ]] || need+=(nsd)
command -v dig >/dev/null || need+=(dnsutils)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" \
    || die "apt-get install ${need[*]} failed"
fi
NSD=$(command -v nsd || echo /usr/sbin/nsd)
# Debian's nsd package may start a system nsd on :53; this benchmark uses its own ports.

CPUS=$(nproc)
((CPUS >= 2)) || die "needs at least 2 CPUs: one for the server, one for dnsperf"
CLIENT_CPUS="1-$((CPUS - 1))"

say "building wharf (release)"
cargo build --release --bin wharf >&2
WHARF=target/release/wharf

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); RAFT_PORT=$(free_port); WHARF_DNS=$(free_port); NSD_PORT=$(free_port)

say "starting wharf on CPU 0 (DNS 127.0.0.1:$WHARF_DNS)"
taskset -c 0 WHARF_SERF_LAN_PORT="$(free_port)" "$WHARF" agent --dev --no-proxy --node bench --data-dir "$WORK/wharf" \
  --http-port "$HTTP_PORT" --raft-port "$RAFT_PORT" --dns-port "$WHARF_DNS" --log-level warn \
  2>"$WORK/wharf.log" &
PIDS+=($!)
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/v1/catalog/node/bench" | grep -q '"Node"' && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$HTTP_PORT/v1/catalog/node/bench" | grep -q '"Node"' \
  || die "wharf did not come up: $(cat "$WORK/wharf.log")"

say "registering $SERVICES services x $INSTANCES instances through the HTTP API; writing the NSD zone"
python3 - "$HTTP_PORT" "$SERVICES" "$INSTANCES" "$WORK" <<'EOF'
import concurrent.futures, json, sys, urllib.request
port, services, instances, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def node(i): return f"node-{i:02d}", f"10.0.{i}.1"
def service(s): return f"svc-{s:03d}", 20000 + s

def register(job):
    s, i = job
    (n, addr), (name, port_) = node(i), service(s)
    body = {"Node": n, "Address": addr, "Service": {"ID": f"{name}-{i}", "Service": name, "Port": port_},
            "Check": {"CheckID": f"{name}-{i}-ok", "Name": "ok", "Status": "passing", "ServiceID": f"{name}-{i}"}}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/catalog/register", json.dumps(body).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.status

jobs = [(s, i) for s in range(services) for i in range(instances)]
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    list(pool.map(register, jobs))

zone = ["$ORIGIN consul.", "$TTL 0",
        "@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0", "@ IN NS ns.consul.", "ns IN A 127.0.0.1"]
for i in range(instances):
    n, addr = node(i)
    zone.append(f"{n}.node.dc1 IN A {addr}")
queries = []
for s in range(services):
    name, p = service(s)
    for i in range(instances):
        n, addr = node(i)
        zone.append(f"{name}.service IN A {addr}")
        zone.append(f"{name}.service IN SRV 1 1 {p} {n}.node.dc1.consul.")
    queries += [f"{name}.service.consul A", f"{name}.service.consul SRV"]
open(f"{work}/consul.zone", "w").write("\n".join(zone) + "\n")
open(f"{work}/queries.txt", "w").write("\n".join(queries) + "\n")
EOF

mkdir -p "$WORK/nsd"
cat >"$WORK/nsd/nsd.conf" <<EOF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$WORK"
    database: ""
    zonelistfile: "$WORK/nsd/zone.list"
    xfrdfile: "$WORK/nsd/xfrd.state"
    xfrdir: "$WORK/nsd"
    pidfile: "$WORK/nsd/nsd.pid"
    logfile: "$WORK/nsd/nsd.log"
    verbosity: 0
    hide-version: yes
    # Debian builds NSD with response rate limiting (200 answers/s per client netblock by
    # default), which would drop most of dnsperf's queries: off, like wharf.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: consul
    zonefile: consul.zone
EOF
say "starting NSD on CPU 0 (127.0.0.1:$NSD_PORT)"
taskset -c 0 "$NSD" -d -c "$WORK/nsd/nsd.conf" 2>"$WORK/nsd/stderr" &
PIDS+=($!)
for _ in $(seq 1 100); do
  dig @127.0.0.1 -p "$NSD_PORT" +short +time=1 +tries=1 svc-000.service.consul A 2>/dev/null | grep -q 10.0 && break
  sleep 0.1
done

# Both servers must give the same answers before their speed means anything.
for q in "svc-000.service.consul A" "svc-099.service.consul SRV"; do
  w=$(dig @127.0.0.1 -p "$WHARF_DNS" +bufsize=4096 +short $q | sort)
  n=$(dig @127.0.0.1 -p "$NSD_PORT" +bufsize=4096 +short $q | sort)
  [[ -n "$w" && "$w" == "$n" ]] || die "answers differ for $q: wharf=[$w] nsd=[$n]"
  wa=$(dig @127.0.0.1 -p "$WHARF_DNS" +bufsize=4096 $q | grep -o 'ADDITIONAL: [0-9]*')
  na=$(dig @127.0.0.1 -p "$NSD_PORT" +bufsize=4096 $q | grep -o 'ADDITIONAL: [0-9]*')
  echo "check $q: $(echo "$w" | wc -l) answers on both; wharf $wa, nsd $na" >&2
done

# perf NAME PORT [extra dnsperf args]: one dnsperf run on the client CPUs; prints
# "qps avg_ms max_ms lost".
perf() {
  local out
  out=$(taskset -c "$CLIENT_CPUS" dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries.txt" -e \
    -l "$SECONDS_PER_RUN" -c 8 -T 1 "${@:3}" 2>&1) || die "dnsperf against $1 failed: $out"
  { echo "---- dnsperf against $1 ${*:3}"; echo "$out" | sed -n '/Statistics:/,$p'; } >>"$WORK/dnsperf.txt"
  local qps avg max lost
  qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
  avg=$(echo "$out" | awk '/Average Latency/ {print $4 * 1000}')
  max=$(echo "$out" | awk '/Average Latency/ {gsub(/\)/, "", $8); print $8 * 1000}')
  lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
  echo "$qps $avg $max $lost"
}

say "saturating runs (${SECONDS_PER_RUN}s each, 8 clients, up to 200 queries in flight)"
read -r W_QPS W_AVG W_MAX W_LOST < <(perf wharf "$WHARF_DNS" -q 200)
read -r N_QPS N_AVG N_MAX N_LOST < <(perf nsd "$NSD_PORT" -q 200)
say "fixed-load runs (${FIXED_QPS} queries/s, ${SECONDS_PER_RUN}s each)"
read -r WF_QPS WF_AVG WF_MAX WF_LOST < <(perf wharf "$WHARF_DNS" -q 200 -Q "$FIXED_QPS")
read -r NF_QPS NF_AVG NF_MAX NF_LOST < <(perf nsd "$NSD_PORT" -q 200 -Q "$FIXED_QPS")

WHARF_VERSION=$("$WHARF" --version || echo wharf)
NSD_VERSION=$({ "$NSD" -v 2>&1 || true; } | head -1)
DNSPERF_VERSION=$({ dnsperf -h 2>&1 || true; } | awk '/Version/ {print $2}')
cat <<EOF

DNS benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))
catalog: $SERVICES services x $INSTANCES instances (10 nodes); queries: A + SRV of every service, EDNS 4096
server pinned to CPU 0 (taskset -c 0); dnsperf $DNSPERF_VERSION on CPUs $CLIENT_CPUS; ${SECONDS_PER_RUN}s per run

                                   saturating (one core)           at ${FIXED_QPS} q/s
server                             q/s      avg ms   max ms  lost  avg ms   max ms  lost
$(printf '%-32s %9.0f %8.3f %8.2f %5s %7.3f %8.2f %5s' "$WHARF_VERSION" "$W_QPS" "$W_AVG" "$W_MAX" "$W_LOST" "$WF_AVG" "$WF_MAX" "$WF_LOST")
$(printf '%-32s %9.0f %8.3f %8.2f %5s %7.3f %8.2f %5s' "$NSD_VERSION" "$N_QPS" "$N_AVG" "$N_MAX" "$N_LOST" "$NF_AVG" "$NF_MAX" "$NF_LOST")

ratio wharf/NSD: $(python3 -c "print(f'{$W_QPS / $N_QPS:.2f}')")x the queries per second; $(python3 -c "print(f'{$WF_AVG / $NF_AVG:.2f}')")x the average latency at ${FIXED_QPS} q/s
EOF

echo
echo "dnsperf summaries:"
cat "$WORK/dnsperf.txt"
