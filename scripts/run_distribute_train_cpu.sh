#!/usr/bin/env bash
# Data-parallel training with WORKERS CPU processes (default 2) through msrun; logs in <calling folder>/logs/train_parallel_cpu/ (MASTER_PORT, default 8118).
# Usage: bash run_distribute_train_cpu.sh CONFIG [WORKERS] [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
msrun_train_main CPU "$(basename "$0")" 2 "$@"
