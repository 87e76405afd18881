#!/bin/sh
# Build the component: build/plugin.wasm.
set -eu
cd "$(dirname "$0")"
if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$'; then
    echo "the wasm32-wasip2 target is missing; run: rustup target add wasm32-wasip2" >&2
    exit 1
fi
cargo build --release --target wasm32-wasip2
mkdir -p build
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" build/plugin.wasm
echo "built build/plugin.wasm ($(wc -c < build/plugin.wasm) bytes)"
