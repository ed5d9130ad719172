#!/usr/bin/env bash
# Catalog benchmark: wharf's durable writes/s at 1/16/64 clients beside etcd (the reference,
# installed from Debian) in the same run, and 1,000 blocked watchers woken by one write.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server
fi
# etcd-server's package may start a system etcd on :2379; the bench uses its own ports.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo bench --bench catalog "$@"
