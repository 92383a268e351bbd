#!/usr/bin/env bash
# Data-parallel training on the Ascend devices of a rank table: one process per device of THIS server. With a
# multi-server table run the same command on every server; this server is the one whose server_id is SERVER_ID,
# else (SERVER_INDEX) the one at that position, else the one whose server_id is an IP address of this machine.
# Logs in <calling folder>/logs/train_parallel_ascend/rank_<RANK_ID>/.
# Usage: bash run_distribute_train_ascend.sh RANK_TABLE CONFIG [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rank_table_train_main "$(basename "$0")" "$@"
