#!/usr/bin/env bash
# Export a checkpoint (MINDIR by default; AIR needs --device_target Ascend); the file and its log go to <calling folder>/logs/export/.
# Usage: bash run_export.sh CONFIG CHECKPOINT [MINDIR|ONNX|AIR] [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export_main "$(basename "$0")" "$@"
