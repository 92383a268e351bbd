#!/usr/bin/env bash
# Evaluate a checkpoint on CPU; prints accuracy=...; logs in <calling folder>/logs/eval_cpu/.
# Usage: bash run_eval_cpu.sh CONFIG [CHECKPOINT] [--key value ...]   (CHECKPOINT defaults to the config's checkpoint_file_path)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
eval_main CPU "$(basename "$0")" "$@"
