#!/usr/bin/env bash
# Builds every plugin crate of the guest workspace (examples/*, hostile/*) to a WebAssembly
# component (wasm32-wasip2, release, --locked) and copies the components into an output directory.
#
# Usage: plugins/guest/build.sh [OUTPUT_DIR]   (default: plugins/guest/target/plugins)
# Honors CARGO_TARGET_DIR (default: plugins/guest/target).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
out="${1:-$here/target/plugins}"
target_dir="${CARGO_TARGET_DIR:-$here/target}"

sysroot="$(cd "$here" && rustc --print sysroot)"
if [[ ! -d "$sysroot/lib/rustlib/$target" ]]; then
    echo "error: the Rust target $target is not installed for $(cd "$here" && rustc --version)" >&2
    echo "       run: rustup target add $target" >&2
    exit 1
fi

cargo build --manifest-path "$here/Cargo.toml" --target-dir "$target_dir" \
    --workspace --release --locked --target "$target"

mkdir -p "$out"
built="$target_dir/$target/release"
component_magic="0061736d0d000100"
count=0
for manifest in "$here"/examples/*/Cargo.toml "$here"/hostile/*/Cargo.toml; do
    package="$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)"
    file="${package//-/_}.wasm"
    if [[ ! -f "$built/$file" ]]; then
        echo "error: $built/$file was not produced by the build of package $package" >&2
        exit 1
    fi
    magic="$(head -c 8 "$built/$file" | od -An -tx1 | tr -d ' \n')"
    if [[ "$magic" != "$component_magic" ]]; then
        echo "error: $built/$file is not a WebAssembly component (header $magic)" >&2
        exit 1
    fi
    cp "$built/$file" "$out/$file"
    printf '%8d  %s\n' "$(wc -c <"$out/$file")" "$out/$file"
    count=$((count + 1))
done
echo "$count plugin components in $out"
