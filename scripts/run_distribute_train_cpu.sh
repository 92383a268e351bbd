#!/usr/bin/env bash
# Data-parallel training with WORKERS CPU processes (default 2) through msrun, on this machine or several (run the
# same command on each with its NODE_RANK; MASTER_ADDR is node 0); logs in <calling folder>/logs/train_parallel_cpu[_node<R>]/.
# Usage: bash run_distribute_train_cpu.sh CONFIG [WORKERS [LOCAL_WORKERS NODE_RANK MASTER_ADDR [MASTER_PORT]]] [--key value ...]
#        (or the environment variables WORKER_NUM LOCAL_WORKER_NUM NODE_RANK MASTER_ADDR MASTER_PORT; MASTER_PORT default 8118)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
msrun_train_main CPU "$(basename "$0")" 2 "$@"
