#!/bin/sh
# Generates the Python gRPC stubs of rvirt's API from proto/ into OUT_DIR (default: a new
# temporary directory) and prints OUT_DIR. Put OUT_DIR on PYTHONPATH to `import rvirt.v1`.
#
# Uses `python3 -m grpc_tools.protoc` (pip's grpcio-tools, or Debian's python3-grpc-tools) with
# the google/protobuf includes that grpc_tools ships. rvirt's .proto files use proto3 `optional`
# fields, which need protoc 3.15 or later; when grpc_tools' own protoc is older (Debian bookworm's
# python3-grpc-tools has 3.5), the system `protoc` (protobuf-compiler) with `grpc_python_plugin`
# (protobuf-compiler-grpc) generates the same files.
#
# Exit status 3: the tools are missing (the message says which).
set -eu

PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../../proto" && pwd)
out=${1:-$(mktemp -d)}
mkdir -p "$out"

if ! wkt=$("$PYTHON" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))' 2>/dev/null); then
    echo "gen.sh: $PYTHON cannot import grpc_tools: install grpcio-tools (pip) or python3-grpc-tools (Debian)" >&2
    exit 3
fi

# "libprotoc 3.21.12" -> 3021
protoc_level() {
    sed -n 's/^libprotoc \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | {
        read -r major minor || exit 0
        # protoc 21+ (the 3.21 successor numbering) is new enough as well.
        if [ "$major" -gt 3 ]; then echo 9999; else echo $((major * 1000 + minor)); fi
    }
}

files=$(cd "$proto" && ls rvirt/v1/*.proto)
bundled=$("$PYTHON" -m grpc_tools.protoc --version 2>/dev/null | protoc_level || true)
if [ -n "$bundled" ] && [ "$bundled" -ge 3015 ]; then
    (cd "$proto" && "$PYTHON" -m grpc_tools.protoc -I . -I "$wkt" \
        --python_out="$out" --grpc_python_out="$out" $files)
elif command -v protoc >/dev/null 2>&1 && command -v grpc_python_plugin >/dev/null 2>&1 &&
    [ "$(protoc --version | protoc_level)" -ge 3015 ]; then
    (cd "$proto" && protoc -I . -I "$wkt" \
        --python_out="$out" --grpc_out="$out" \
        --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" $files)
else
    echo "gen.sh: grpc_tools' protoc is older than 3.15 (no proto3 optional fields) and no newer protoc with grpc_python_plugin is installed: install protobuf-compiler and protobuf-compiler-grpc (Debian), or a recent grpcio-tools (pip)" >&2
    exit 3
fi
echo "$out"
