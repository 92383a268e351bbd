#!/usr/bin/env bash
# Train on one CPU device; logs in <calling folder>/logs/train_standalone_cpu/.
# Usage: bash run_standalone_train_cpu.sh CONFIG [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
standalone_train_main CPU "$(basename "$0")" "$@"
