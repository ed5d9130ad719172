#!/usr/bin/env bash
# The demo web backend's request rate, direct and through wharf, before and after its
# one-write/TCP_NODELAY fix, in one run (wrk, 16 connections, loopback). The old server is
# built from this repository's history (BASE, default the commit before the fix).
# Needs target/release/wharf (cargo build --release) and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${BASE:-446aef3~1}"
DURATION="${DURATION:-5s}"
WHARF="${WHARF:-target/release/wharf}"
[[ -x "$WHARF" ]] || { echo "build wharf first: cargo build --release" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for v in old new; do
  cp -r demo/web "$work/$v"
done
git show "$BASE:demo/web/src/main.rs" >"$work/old/src/main.rs"
for v in old new; do
  cargo build --quiet --release --manifest-path "$work/$v/Cargo.toml" --target-dir "$work/target-$v"
done

http=$(free_port); proxy=$(free_port)
WHARF_SERF_LAN_PORT="$(free_port)" "$WHARF" agent --dev --data-dir "$work/data" --http-port "$http" --raft-port "$(free_port)" \
  --dns-port "$(free_port)" --proxy-addr "127.0.0.1:$proxy" --docker off 2>"$work/wharf.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "127.0.0.1:$http/v1/status/leader" | grep -q : && break; sleep 0.1; done

declare -A port
for v in old new; do
  port[$v]=$(free_port)
  PORT=${port[$v]} "$work/target-$v/release/wharf-demo-web" 2>/dev/null &
  pids+=($!)
  curl -sf -X PUT "127.0.0.1:$http/v1/agent/service/register" \
    -d "{\"Name\": \"demo-$v\", \"Address\": \"127.0.0.1\", \"Port\": ${port[$v]}}" >/dev/null
done
for v in old new; do
  for _ in $(seq 100); do curl -sf -H "Host: demo-$v.localhost" "127.0.0.1:$proxy/" >/dev/null && break; sleep 0.1; done
done

rps() { wrk -t1 -c16 -d"$DURATION" "$@" | awk '/Requests\/sec/ {print $2}'; }
printf '%-22s %12s %14s\n' "demo server" "direct rps" "via wharf rps"
for v in old new; do
  direct=$(rps "http://127.0.0.1:${port[$v]}/")
  via=$(rps -H "Host: demo-$v.localhost" "http://127.0.0.1:$proxy/")
  printf '%-22s %12s %14s\n' "$v ($([[ $v == old ]] && echo "$BASE" || echo HEAD))" "$direct" "$via"
done
