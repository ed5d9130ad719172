#!/usr/bin/env bash
# wharf as a candidate of ../shared/bench/peers.sh: a single-node agent whose proxy
# listens on $LISTEN with $WORKERS threads and routes by default to a service "bench"
# made of $BACKENDS (host:port,...), registered from a config dir.
#   CANDIDATE_CMD=bench/wharf-candidate.sh CANDIDATE_NAME=wharf ../shared/bench/peers.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${WHARF_BIN:-$HERE/../target/release/wharf}"
[[ -x "$BIN" ]] || { echo "build wharf first: cargo build --release" >&2; exit 1; }
: "${BACKENDS:?BACKENDS=host:port,... is required}"
LISTEN="${LISTEN:-127.0.0.1:8080}"
WORKERS="${WORKERS:-1}"
[[ "$WORKERS" == auto ]] && WORKERS="$(nproc)"
WORK="$(mktemp -d /tmp/wharf-candidate.XXXXXX)"
mkdir -p "$WORK/conf"
entries=()
i=0
IFS=, read -ra list <<<"$BACKENDS"
for b in "${list[@]}"; do
  i=$((i + 1))
  entries+=("{\"name\":\"bench\",\"id\":\"bench-$i\",\"address\":\"${b%:*}\",\"port\":${b##*:}}")
done
(IFS=,; printf '{"services":[%s]}\n' "${entries[*]}") >"$WORK/conf/bench.json"
export WHARF_SERF_LAN_PORT="${WHARF_SERF_LAN_PORT:-18301}"
exec "$BIN" agent --dev --node bench --data-dir "$WORK/data" --config-dir "$WORK/conf" \
  --http-port "${WHARF_HTTP_PORT:-18500}" --raft-port "${WHARF_RAFT_PORT:-18300}" \
  --proxy-addr "$LISTEN" --proxy-threads "$WORKERS" --default-service bench --log-level warn
