#!/bin/sh
# Build, then run the router conformance suite and this plugin's own cases.
set -eu
cd "$(dirname "$0")"
./build.sh
"${SHOAL:-shoal}" plugin test --kind router build/plugin.wasm ../conformance/router tests/
