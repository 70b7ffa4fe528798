#!/usr/bin/env bash
# Regenerates the Python stubs in client/ludus/v1 and client/ludus/mlagents/v1 from proto/.
# One command: `make proto`.
# Usage: gen_proto.sh [OUT_DIR]   (default: client). tests/test_proto_drift.py compares a fresh
# generation with the committed files, so a .proto edit without regenerating fails the tests.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/client}"
python="${PYTHON:-python}"
mkdir -p "$out/ludus/v1" "$out/ludus/mlagents/v1"
"$python" -m grpc_tools.protoc -I "$here/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here/proto/ludus/v1/trainer.proto"
# ML-Agents' .demo record messages (ludus_client.demo_file): plain messages, no service, no grpc stubs.
"$python" -m grpc_tools.protoc -I "$here/proto" \
  --python_out="$out" --pyi_out="$out" \
  "$here/proto/ludus/mlagents/v1/demonstration.proto"
touch "$out/ludus/__init__.py" "$out/ludus/v1/__init__.py" "$out/ludus/mlagents/__init__.py" "$out/ludus/mlagents/v1/__init__.py"
