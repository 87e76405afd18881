#!/bin/sh
# Build the component: build/plugin.wasm, from plugin.c and the WIT in wit/.
#
#   wit-bindgen c      generates gen/{{world_c}}.{c,h} and the component type (cargo install wit-bindgen-cli)
#   clang              compiles for wasm32-wasi against wasi-libc (Debian: clang lld wasi-libc
#                      libclang-rt-dev-wasm32), as a reactor (a library, no main)
#   component new      wraps the core module into a component: wasm-tools if installed
#                      (cargo install wasm-tools), else jco (npm install -g @bytecodealliance/jco)
set -eu
cd "$(dirname "$0")"
CC="${CC:-clang}"
for tool in wit-bindgen "$CC"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is missing (see the comment at the top of build.sh)" >&2; exit 1; }
done
mkdir -p gen build
wit-bindgen c --out-dir gen --world {{kind}} wit >/dev/null
"$CC" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Wno-unused-parameter \
    -o build/core.wasm plugin.c gen/{{world_c}}.c gen/{{world_c}}_component_type.o -Wl,--strip-debug
if command -v wasm-tools >/dev/null 2>&1; then
    wasm-tools component new build/core.wasm -o build/plugin.wasm
elif command -v jco >/dev/null 2>&1; then
    jco new build/core.wasm -o build/plugin.wasm >/dev/null
else
    echo "wasm-tools or jco is needed to make the component (see the comment at the top of build.sh)" >&2
    exit 1
fi
echo "built build/plugin.wasm ($(wc -c < build/plugin.wasm) bytes)"
