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
