#!/usr/bin/env bash
# Data-parallel training on DEVICE_NUM GPUs of this machine (default 8) through msrun; logs in <calling folder>/logs/train_parallel_gpu/ (MASTER_PORT, default 8118).
# Usage: bash run_distribute_train_gpu.sh CONFIG [DEVICE_NUM] [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
msrun_train_main GPU "$(basename "$0")" 8 "$@"
