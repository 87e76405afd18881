#!/bin/sh
# Build, then run the allocator conformance suite and this plugin's own cases.
set -eu
cd "$(dirname "$0")"
./build.sh
"${SHOAL:-shoal}" plugin test --kind allocator build/plugin.wasm ../conformance/allocator tests/
