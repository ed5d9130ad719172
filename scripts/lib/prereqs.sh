# Installs what building and testing wharf needs from the system, for scripts/run and
# scripts/test (sourced by both, so either may run first on a fresh machine).
# Anything that cannot be installed stops the caller loudly.

say() { printf '\n== %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  if [[ -n "$SUDO" ]]; then
    command -v sudo >/dev/null || die "not root and no sudo: install ${missing[*]} as root"
  fi
  say "installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
}

# What `cargo build` of wharf needs: a Rust toolchain, a C compiler, and cmake (pingora's
# compression dependency builds zlib-ng with it).
build_prereqs() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs), then run this again"
  apt_install cmake gcc make
  command -v cmake >/dev/null || die "cmake is installed but not on the PATH"
}

# ensure_docker_engine: makes `docker info` answer, starting dockerd (as root, logging to
# $WHARF_DOCKERD_LOG) when it is installed but not running; fails loudly otherwise.
ensure_docker_engine() {
  docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null \
    || die "the Docker engine is not reachable and dockerd is not installed: install docker.io (or Docker Engine) and start it"
  [[ $(id -u) -eq 0 ]] \
    || die "the Docker engine is not reachable: start it (sudo systemctl start docker, or sudo dockerd &), then run this again"
  local log="${WHARF_DOCKERD_LOG:-/tmp/wharf-dockerd.log}" i
  say "starting dockerd (log: $log)"
  setsid nohup dockerd >"$log" 2>&1 </dev/null &
  for ((i = 0; i < 120; i++)); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "dockerd did not answer within 60 s: see $log"
}
