#!/bin/sh
# Build the component: build/plugin.wasm, from plugin.js and the WIT in wit/.
set -eu
cd "$(dirname "$0")"
if command -v componentize-js >/dev/null 2>&1; then
    COMPONENTIZE=componentize-js
elif [ -x node_modules/.bin/componentize-js ]; then
    COMPONENTIZE=node_modules/.bin/componentize-js
else
    echo "componentize-js is missing; run: npm install -g @bytecodealliance/componentize-js" >&2
    exit 1
fi
mkdir -p build
# Plugins get no stdio, random, clocks or HTTP from WASI (the host links none), so leave them out.
"$COMPONENTIZE" plugin.js --wit wit --world-name {{kind}} --disable stdio random clocks http fetch-event --out build/plugin.wasm
echo "built build/plugin.wasm ($(wc -c < build/plugin.wasm) bytes)"
