#!/usr/bin/env bash
# Multi-node data-parallel training under Slurm: srun starts one msrun per node (run_distribute_train_gpu.sh),
# with NODE_RANK = SLURM_NODEID, MASTER_ADDR = the first node of the allocation, WORKER_NUM = nodes x GPUs per node.
# Submit from the repository root (sbatch runs a copy of this file); edit the #SBATCH lines or override them:
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_train.sh config/swiftformer_xs.yml --dataset_path /data/imagenet
# Environment: LOCAL_WORKER_NUM (default SLURM_GPUS_ON_NODE, else 8), MASTER_PORT (default 10000 + job id mod 20000),
# DEVICE_TARGET (GPU; CPU runs run_distribute_train_cpu.sh), LOG_ROOT (default <submit folder>/logs).
# Usage: bash slurm_train.sh CONFIG [--key value ...]   (inside an allocation; normally through sbatch)
#SBATCH --job-name=soft-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -f "${here}/common.sh" ] || here="${SLURM_SUBMIT_DIR:-$(pwd)}/scripts"
source "${here}/common.sh"
slurm_train_main "$(basename "$0")" "$@"
