#!/usr/bin/env bash
# Data-parallel training on GPUs through msrun: DEVICE_NUM GPUs of this machine (default 8), or several machines
# (run the same command on each with its NODE_RANK; MASTER_ADDR is node 0); logs in <calling folder>/logs/train_parallel_gpu[_node<R>]/.
# Usage: bash run_distribute_train_gpu.sh CONFIG [DEVICE_NUM [LOCAL_DEVICE_NUM NODE_RANK MASTER_ADDR [MASTER_PORT]]] [--key value ...]
#        (or the environment variables WORKER_NUM LOCAL_WORKER_NUM NODE_RANK MASTER_ADDR MASTER_PORT; MASTER_PORT default 8118)
#   one server:  bash run_distribute_train_gpu.sh config/swiftformer_xs.yml 8
#   two servers: bash run_distribute_train_gpu.sh config/swiftformer_xs.yml 16 8 0 10.0.0.1   (on 10.0.0.1)
#                bash run_distribute_train_gpu.sh config/swiftformer_xs.yml 16 8 1 10.0.0.1   (on the other)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
msrun_train_main GPU "$(basename "$0")" 8 "$@"
