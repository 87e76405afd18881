#!/bin/sh
# Build, then run the health-check conformance suite and this plugin's own cases.
set -eu
cd "$(dirname "$0")"
./build.sh
"${SHOAL:-shoal}" plugin test --kind health-check build/plugin.wasm ../conformance/health-check tests/
