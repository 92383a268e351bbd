#!/usr/bin/env bash
# Evaluate a checkpoint on Ascend (device: $DEVICE_ID, default 0); prints accuracy=...; logs in <calling folder>/logs/eval_ascend/.
# Usage: bash run_eval_ascend.sh CONFIG [CHECKPOINT] [--key value ...]   (CHECKPOINT defaults to the config's checkpoint_file_path)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
eval_main Ascend "$(basename "$0")" "$@"
