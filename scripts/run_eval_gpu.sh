#!/usr/bin/env bash
# Evaluate a checkpoint on GPU (device: $DEVICE_ID, default 0); prints accuracy=...; logs in <calling folder>/logs/eval_gpu/.
# Usage: bash run_eval_gpu.sh CONFIG [CHECKPOINT] [--key value ...]   (CHECKPOINT defaults to the config's checkpoint_file_path)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
eval_main GPU "$(basename "$0")" "$@"
