#!/bin/sh
# Build the plugin, then run every case of tests/ on it with `shoal plugin test`: each case is a
# fixture and the answer the plugin must give. Set SHOAL to use another shoal binary.
set -eu
cd "$(dirname "$0")"
./build.sh
"${SHOAL:-shoal}" plugin test --kind {{kind}} build/plugin.wasm tests/
