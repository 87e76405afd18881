#!/bin/sh
# Build the component: build/plugin.wasm, from app.py and Shoal's WIT package (../../wit).
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null 2>&1; then
    echo "componentize-py is missing; run: pip install componentize-py" >&2
    exit 1
fi
mkdir -p build
componentize-py --wit-path ../../wit --world health-check componentize app --output build/plugin.wasm
echo "built build/plugin.wasm ($(wc -c < build/plugin.wasm) bytes)"
