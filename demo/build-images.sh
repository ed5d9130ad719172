#!/usr/bin/env bash
# Builds the demo images locally (no registry needed): wharf-demo-web (a static binary in a
# FROM scratch image) and, with --wharf, wharf itself (the release binary and the shared
# libraries it links, in a FROM scratch image) for demo/docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "docker is required" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path demo/web/Cargo.toml --target x86_64-unknown-linux-gnu --target-dir target/demo
cp target/demo/x86_64-unknown-linux-gnu/release/wharf-demo-web "$work/demo-web"
cp demo/web/Dockerfile "$work/Dockerfile"
docker build --quiet -t wharf-demo-web:latest "$work" >/dev/null
# The same with a Docker HEALTHCHECK in exec form (a scratch image has no shell for
# `docker run --health-cmd`).
printf 'FROM wharf-demo-web:latest\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD ["/demo-web", "check"]\n' \
  >"$work/Dockerfile.health"
docker build --quiet -t wharf-demo-web:health -f "$work/Dockerfile.health" "$work" >/dev/null
echo "built images wharf-demo-web:latest and wharf-demo-web:health"

if [[ "${1:-}" == --wharf ]]; then
  cargo build --quiet --release --bin wharf
  root="$work/wharf-root"
  mkdir -p "$root/bin" "$root/data"
  cp target/release/wharf "$root/bin/wharf"
  # The dynamic loader and every library the binary links.
  ldd target/release/wharf | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
  printf 'FROM scratch\nCOPY wharf-root/ /\nENTRYPOINT ["/bin/wharf"]\n' >"$work/Dockerfile.wharf"
  docker build --quiet -t wharf:latest -f "$work/Dockerfile.wharf" "$work" >/dev/null
  echo "built image wharf:latest"
fi
