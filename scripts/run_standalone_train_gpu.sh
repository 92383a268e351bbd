#!/usr/bin/env bash
# Train on one GPU device (device: $DEVICE_ID, default 0); logs in <calling folder>/logs/train_standalone_gpu/.
# Usage: bash run_standalone_train_gpu.sh CONFIG [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
standalone_train_main GPU "$(basename "$0")" "$@"
