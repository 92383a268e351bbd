#!/usr/bin/env bash
# Train on one Ascend device (device: $DEVICE_ID, default 0); logs in <calling folder>/logs/train_standalone_ascend/.
# Usage: bash run_standalone_train_ascend.sh CONFIG [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
standalone_train_main Ascend "$(basename "$0")" "$@"
