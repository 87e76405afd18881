#!/bin/sh
# Build the component: build/plugin.wasm, from router.js and Shoal's WIT package (../../wit).
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-js >/dev/null 2>&1; then
    echo "componentize-js is missing; run: npm install -g @bytecodealliance/componentize-js" >&2
    exit 1
fi
mkdir -p build
componentize-js router.js --wit ../../wit --world-name router --disable http fetch-event --out build/plugin.wasm
echo "built build/plugin.wasm ($(wc -c < build/plugin.wasm) bytes)"
