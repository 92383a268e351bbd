#!/usr/bin/env bash
# Data-parallel training on the Ascend devices of a rank table (one process per device of this server; SERVER_INDEX picks the server in a multi-server table); logs in <calling folder>/logs/train_parallel_ascend/rank_<RANK_ID>/.
# Usage: bash run_distribute_train_ascend.sh RANK_TABLE CONFIG [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rank_table_train_main "$(basename "$0")" "$@"
