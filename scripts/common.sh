#!/usr/bin/env bash
# Shared helpers of the launch scripts; sourced, never run:  source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Conventions of every script:
# * relative paths given as arguments are taken from the folder the script was called from;
#   so are values of pass-through --key options that name an existing file or folder there;
# * Python runs from the repository root, so relative paths inside a YAML config (dataset_path,
#   output_path, ...) mean what they mean for `python train.py` run from there (as in the README);
# * logs go to ${LOG_ROOT:-<calling folder>/logs}/<job name>/ (printed when the script starts);
#   a previous log.txt there is kept as log.txt.prev;
# * the script waits for its job and exits with its status; wrong or missing arguments print the
#   usage line and exit 1. Extra --key value arguments after the required ones go to the Python script.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPTS_DIR}/.." && pwd)"
CALLER_DIR="$(pwd)"
PYTHON="${PYTHON:-python3}"     # the interpreter that runs train.py / eval.py / export.py
HELPER_PYTHON="${HELPER_PYTHON:-python3}"  # small helpers of these scripts (rank table parsing)
MSRUN="${MSRUN:-msrun}"

# usage_exit USAGE [MESSAGE]: print the message (if any) and the usage line to stderr, exit 1.
usage_exit() {
    if [ -n "${2:-}" ]; then
        echo "ERROR: $2" >&2
    fi
    echo "Usage: $1" >&2
    exit 1
}

# abs_path PATH: PATH made absolute against the calling folder (it need not exist).
abs_path() {
    local p="$1"
    case "$p" in
        /*) ;;
        "~"|"~/"*) p="${HOME}${p#\~}" ;;
        *) p="${CALLER_DIR}/${p}" ;;
    esac
    # normalise ./ and ../ without requiring the path to exist
    if realpath -m / >/dev/null 2>&1; then
        realpath -m -s "$p"
    else
        "$HELPER_PYTHON" -c 'import os, sys; print(os.path.normpath(sys.argv[1]))' "$p"
    fi
}

# require_file USAGE WHAT PATH: exit with the usage line unless PATH is a file; prints the absolute path.
require_file() {
    local path
    if [ -z "${3:-}" ]; then
        usage_exit "$1" "missing $2"
    fi
    path="$(abs_path "$3")"
    if [ ! -f "$path" ]; then
        usage_exit "$1" "$2 not found: $3"
    fi
    echo "$path"
}

# require_positive_int USAGE WHAT VALUE
require_positive_int() {
    if ! [[ "${3:-}" =~ ^[1-9][0-9]*$ ]]; then
        usage_exit "$1" "$2 must be a positive integer, got '${3:-}'"
    fi
}

# require_non_negative_int USAGE WHAT VALUE
require_non_negative_int() {
    if ! [[ "${3:-}" =~ ^(0|[1-9][0-9]*)$ ]]; then
        usage_exit "$1" "$2 must be a non-negative integer, got '${3:-}'"
    fi
}

# take_extra_args USAGE ARGS...: the pass-through arguments after the required ones. Exits with the usage
# line unless they start with --key; sets the array EXTRA_ARGS to ARGS with every value that names an
# existing file or folder relative to the calling folder made absolute (Python runs from the repository root).
take_extra_args() {
    local usage="$1"
    shift
    if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
        usage_exit "$usage" "unexpected argument '$1' (extra arguments are --key value pairs)"
    fi
    EXTRA_ARGS=()
    local arg key value
    for arg in "$@"; do
        if [[ "$arg" == --*=* ]]; then
            key="${arg%%=*}"
            value="${arg#*=}"
            if [[ -n "$value" && "$value" != /* && -e "${CALLER_DIR}/${value}" ]]; then
                arg="${key}=$(abs_path "$value")"
            fi
        elif [[ "$arg" != --* && -n "$arg" && "$arg" != /* && -e "${CALLER_DIR}/${arg}" ]]; then
            arg="$(abs_path "$arg")"
        fi
        EXTRA_ARGS+=("$arg")
    done
}

# init_log_dir NAME: creates ${LOG_ROOT:-<calling folder>/logs}/NAME, sets LOG_DIR and LOG_FILE, prints them.
init_log_dir() {
    local root="${LOG_ROOT:-${CALLER_DIR}/logs}"
    LOG_DIR="$(abs_path "${root}/$1")"
    mkdir -p "$LOG_DIR" || { echo "ERROR: cannot create the log folder $LOG_DIR" >&2; exit 1; }
    LOG_FILE="${LOG_DIR}/log.txt"
    if [ -f "$LOG_FILE" ]; then
        mv -f "$LOG_FILE" "${LOG_FILE}.prev"
    fi
    echo "Log folder: ${LOG_DIR}"
}

# run_logged LOG_FILE COMMAND...: run COMMAND from the repository root, output to the console and
# LOG_FILE; returns the command's exit status.
run_logged() {
    local log="$1"
    shift
    echo "Command: $*" | tee -a "$log"
    (cd "$REPO_ROOT" && "$@") 2>&1 | tee -a "$log"
    return "${PIPESTATUS[0]}"
}

# finish STATUS WHAT: print the outcome and exit with STATUS.
finish() {
    if [ "$1" -eq 0 ]; then
        echo "$2 finished; log: ${LOG_FILE}"
    else
        echo "$2 failed (exit status $1); log: ${LOG_FILE}" >&2
    fi
    exit "$1"
}

# device_target_of_script NAME: Ascend / GPU / CPU from a script name ending in _ascend / _gpu / _cpu.
device_target_of_script() {
    case "$1" in
        *_ascend*) echo "Ascend" ;;
        *_gpu*) echo "GPU" ;;
        *) echo "CPU" ;;
    esac
}

# ------------------------------------------------------------------------------------------------
# The jobs. Each launch script is one call of these with its device target.

# single_device_env TARGET: a one-process job: RANK_ID=0, RANK_SIZE=1 and, off CPU, DEVICE_ID (default 0),
# passed on as DEVICE_ARGS=(--device_id N).
single_device_env() {
    DEVICE_ARGS=()
    if [ "$1" != "CPU" ]; then
        export DEVICE_ID="${DEVICE_ID:-0}"
        DEVICE_ARGS=(--device_id "$DEVICE_ID")
    fi
    export RANK_ID=0 RANK_SIZE=1
}

# standalone_train_main TARGET SCRIPT ARGS...   (run_standalone_train_{ascend,gpu,cpu}.sh CONFIG [--key value ...])
standalone_train_main() {
    local target="$1" script="$2"
    shift 2
    local usage="bash ${script} CONFIG [--key value ...]"
    [ $# -ge 1 ] || usage_exit "$usage" "missing CONFIG"
    local config
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    shift
    take_extra_args "$usage" "$@"
    single_device_env "$target"
    init_log_dir "train_standalone_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    run_logged "$LOG_FILE" "$PYTHON" train.py --config_path "$config" --device_target "$target" \
        --run_distribute False "${DEVICE_ARGS[@]}" "${EXTRA_ARGS[@]}"
    finish $? "Training"
}

# eval_main TARGET SCRIPT ARGS...   (run_eval_{ascend,gpu,cpu}.sh CONFIG [CHECKPOINT] [--key value ...])
eval_main() {
    local target="$1" script="$2"
    shift 2
    local usage="bash ${script} CONFIG [CHECKPOINT] [--key value ...]"
    [ $# -ge 1 ] || usage_exit "$usage" "missing CONFIG"
    local config ckpt_args=()
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    shift
    if [ $# -ge 1 ] && [[ "$1" != --* ]]; then
        local ckpt
        ckpt="$(require_file "$usage" "checkpoint" "$1")" || exit 1
        ckpt_args=(--checkpoint_file_path "$ckpt")
        shift
    fi
    take_extra_args "$usage" "$@"
    single_device_env "$target"
    init_log_dir "eval_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    run_logged "$LOG_FILE" "$PYTHON" eval.py --config_path "$config" --device_target "$target" \
        "${DEVICE_ARGS[@]}" "${ckpt_args[@]}" "${EXTRA_ARGS[@]}"
    finish $? "Evaluation"
}

# eval_onnx_main TARGET SCRIPT ARGS...   (run_eval_onnx_{cpu,gpu}.sh CONFIG ONNX_FILE [--key value ...])
eval_onnx_main() {
    local target="$1" script="$2"
    shift 2
    local usage="bash ${script} CONFIG ONNX_FILE [--key value ...]"
    [ $# -ge 2 ] || usage_exit "$usage" "missing CONFIG and/or ONNX_FILE"
    local config onnx
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    onnx="$(require_file "$usage" "ONNX file" "$2")" || exit 1
    shift 2
    take_extra_args "$usage" "$@"
    single_device_env "$target"
    init_log_dir "eval_onnx_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    run_logged "$LOG_FILE" "$PYTHON" eval_onnx.py --config_path "$config" --onnx_path "$onnx" \
        --device_target "$target" "${DEVICE_ARGS[@]}" "${EXTRA_ARGS[@]}"
    finish $? "ONNX evaluation"
}

# msrun_train_main TARGET SCRIPT DEFAULT_WORKERS ARGS...
#   CONFIG [N [LOCAL_N NODE_RANK MASTER_ADDR [MASTER_PORT]]] [--key value ...], through msrun.
# Each positional value may come from the environment instead: WORKER_NUM (N, all workers of the job),
# LOCAL_WORKER_NUM (LOCAL_N, the workers on this node; default N: one node), NODE_RANK (default 0; this
# node's workers get ranks NODE_RANK * LOCAL_N ... + LOCAL_N - 1), MASTER_ADDR (the address of node 0,
# where msrun runs the scheduler; needed with several nodes, 127.0.0.1 on one), MASTER_PORT
# (default 8118). CLUSTER_TIME_OUT (seconds msrun waits for the other nodes) is passed on when set.
# Run the same command on every node with its own NODE_RANK; logs go to LOG_DIR (one node) or
# LOG_DIR_node<NODE_RANK> (several), per-worker logs inside.
msrun_train_main() {
    local target="$1" script="$2" default_n="$3"
    shift 3
    local what="DEVICE_NUM"
    [ "$target" = "CPU" ] && what="WORKERS"
    local usage="bash ${script} CONFIG [${what} [LOCAL_${what} NODE_RANK MASTER_ADDR [MASTER_PORT]]] [--key value ...]
       (or set WORKER_NUM LOCAL_WORKER_NUM NODE_RANK MASTER_ADDR MASTER_PORT; one node by default)"
    [ $# -ge 1 ] || usage_exit "$usage" "missing CONFIG"
    local config
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    shift
    local positional=()
    while [ $# -ge 1 ] && [[ "$1" != --* ]] && [ ${#positional[@]} -lt 5 ]; do
        positional+=("$1")
        shift
    done
    local n="${positional[0]:-${WORKER_NUM:-$default_n}}"
    require_positive_int "$usage" "$what" "$n"
    local local_n="${positional[1]:-${LOCAL_WORKER_NUM:-$n}}"
    require_positive_int "$usage" "LOCAL_${what}" "$local_n"
    local node_rank="${positional[2]:-${NODE_RANK:-0}}"
    require_non_negative_int "$usage" "NODE_RANK" "$node_rank"
    local master_addr="${positional[3]:-${MASTER_ADDR:-}}"
    local master_port="${positional[4]:-${MASTER_PORT:-8118}}"
    if ! [[ "$master_port" =~ ^[0-9]+$ ]] || [ "$master_port" -lt 1024 ] || [ "$master_port" -gt 65535 ]; then
        usage_exit "$usage" "MASTER_PORT must be a port number from 1024 to 65535, got '${master_port}'"
    fi
    if [ "$local_n" -gt "$n" ]; then
        usage_exit "$usage" "LOCAL_${what} (${local_n}) cannot exceed ${what} (${n})"
    fi
    local nodes=$(( (n + local_n - 1) / local_n ))
    if [ "$nodes" -eq 1 ]; then
        [ "$node_rank" -eq 0 ] || usage_exit "$usage" "NODE_RANK must be 0 when all ${n} workers run on this node"
        master_addr="127.0.0.1"  # the scheduler runs here (a MASTER_ADDR left in the environment does not count)
    else
        [ -n "$master_addr" ] || usage_exit "$usage" "MASTER_ADDR (the address of node 0) is needed with several nodes"
        if [ $(( (node_rank + 1) * local_n )) -gt "$n" ]; then
            usage_exit "$usage" "NODE_RANK ${node_rank} is out of range: ${n} workers, ${local_n} per node make nodes 0 to $(( n / local_n - 1 ))"
        fi
    fi
    take_extra_args "$usage" "$@"
    if ! command -v "$MSRUN" >/dev/null 2>&1; then
        echo "ERROR: '$MSRUN' not found: msrun comes with MindSpore >= 2.3 (pip install mindspore)" >&2
        exit 1
    fi
    local job="train_parallel_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    local timeout_args=()
    [ -n "${CLUSTER_TIME_OUT:-}" ] && timeout_args=(--cluster_time_out="$CLUSTER_TIME_OUT")
    if [ "$nodes" -gt 1 ]; then
        init_log_dir "${job}_node${node_rank}"
        echo "Node ${node_rank} of ${nodes}: workers $(( node_rank * local_n )) to $(( node_rank * local_n + local_n - 1 )) of ${n}; master ${master_addr}:${master_port}"
    else
        init_log_dir "$job"
        echo "Workers: ${n}"
    fi
    echo "Per-worker logs: ${LOG_DIR}/worker_<rank>.log"
    run_logged "$LOG_FILE" "$MSRUN" --worker_num="$n" --local_worker_num="$local_n" --node_rank="$node_rank" \
        --master_addr="$master_addr" --master_port="$master_port" --log_dir="$LOG_DIR" --join=True "${timeout_args[@]}" \
        train.py --config_path "$config" --device_target "$target" --run_distribute True "${EXTRA_ARGS[@]}"
    finish $? "Distributed training"
}

# slurm_train_main SCRIPT ARGS...   (slurm_train.sh CONFIG [--key value ...], inside a Slurm allocation)
# One msrun per node through srun: WORKER_NUM = nodes x LOCAL_WORKER_NUM (default: SLURM_GPUS_ON_NODE,
# else 8), NODE_RANK = SLURM_NODEID, MASTER_ADDR = the first host of SLURM_JOB_NODELIST, MASTER_PORT =
# 10000 + SLURM_JOB_ID mod 20000 (one port per job). DEVICE_TARGET (GPU, or CPU) picks the launcher.
slurm_train_main() {
    local script="$1"
    shift
    local usage="bash ${script} CONFIG [--key value ...]   (sbatch --nodes=N --gpus-per-node=G ${script} CONFIG ...)"
    [ $# -ge 1 ] || usage_exit "$usage" "missing CONFIG"
    local config
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    shift
    take_extra_args "$usage" "$@"
    [ -n "${SLURM_JOB_NODELIST:-}" ] || usage_exit "$usage" "not inside a Slurm allocation (SLURM_JOB_NODELIST is not set): submit with sbatch"
    local target="${DEVICE_TARGET:-GPU}" launcher
    case "$target" in
        GPU) launcher="${SCRIPTS_DIR}/run_distribute_train_gpu.sh" ;;
        CPU) launcher="${SCRIPTS_DIR}/run_distribute_train_cpu.sh" ;;
        *) usage_exit "$usage" "DEVICE_TARGET must be GPU or CPU, got '${target}'" ;;
    esac
    local nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
    local first_host
    first_host="$("${SCONTROL:-scontrol}" show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
    [ -n "$first_host" ] || { echo "ERROR: cannot expand SLURM_JOB_NODELIST '${SLURM_JOB_NODELIST}' with scontrol" >&2; exit 1; }
    export LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-${SLURM_GPUS_ON_NODE:-8}}"
    require_positive_int "$usage" "LOCAL_WORKER_NUM" "$LOCAL_WORKER_NUM"
    export WORKER_NUM=$(( nodes * LOCAL_WORKER_NUM ))
    export MASTER_ADDR="${MASTER_ADDR:-$first_host}"
    export MASTER_PORT="${MASTER_PORT:-$(( 10000 + ${SLURM_JOB_ID:-0} % 20000 ))}"
    export LOG_ROOT="${LOG_ROOT:-${CALLER_DIR}/logs}"
    echo "Slurm job ${SLURM_JOB_ID:-?}: ${nodes} node(s) x ${LOCAL_WORKER_NUM} ${target} workers; master ${MASTER_ADDR}:${MASTER_PORT}"
    # NODE_RANK is each task's own SLURM_NODEID, so it is read inside the task
    "${SRUN:-srun}" --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        bash -c 'NODE_RANK="$SLURM_NODEID" exec bash "$@"' slurm_task "$launcher" "$config" "${EXTRA_ARGS[@]}"
    local status=$?
    if [ "$status" -eq 0 ]; then
        echo "Slurm training finished; logs: ${LOG_ROOT}/$(basename "$launcher" .sh | sed 's/^run_distribute_train/train_parallel/')_node<R>/"
    else
        echo "Slurm training failed (exit status ${status})" >&2
    fi
    exit "$status"
}

# rank_table_devices FILE: prints "RANK_SIZE SERVER_ID" then one "DEVICE_ID RANK_ID" line per device of this
# server in a rank table (version 1.0 layout: server_list[].server_id, server_list[].device[].{device_id,rank_id}).
# This server: SERVER_ID (a server_id of the table), else SERVER_INDEX (its position), else the only server,
# else the server whose server_id is an IP address of this machine (LOCAL_IPS, default `hostname -I`).
rank_table_devices() {
    local local_ips="${LOCAL_IPS:-$(hostname -I 2>/dev/null || true)}"
    SERVER_ID="${SERVER_ID:-}" SERVER_INDEX="${SERVER_INDEX:-}" LOCAL_IPS="$local_ips" "$HELPER_PYTHON" - "$1" <<'PY'
import json, os, socket, sys
path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    servers = table["server_list"]
    ids = [str(s["server_id"]) for s in servers]
    total = sum(len(s["device"]) for s in servers)
except (OSError, ValueError, KeyError, TypeError) as err:
    sys.exit(f"ERROR: {path} is not a usable rank table (server_list[].server_id, server_list[].device[]): "
             f"{type(err).__name__}: {err}")
wanted_id, wanted_index = os.environ["SERVER_ID"], os.environ["SERVER_INDEX"]
if wanted_id:
    if wanted_id not in ids:
        sys.exit(f"ERROR: SERVER_ID {wanted_id} is not in {path} (servers: {', '.join(ids)})")
    index = ids.index(wanted_id)
elif wanted_index:
    if not wanted_index.isdigit() or int(wanted_index) >= len(servers):
        sys.exit(f"ERROR: SERVER_INDEX {wanted_index} is not a server of {path} (0 to {len(servers) - 1})")
    index = int(wanted_index)
elif len(servers) == 1:
    index = 0
else:
    local = set(os.environ["LOCAL_IPS"].split())
    try:
        local.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    matches = [i for i, server_id in enumerate(ids) if server_id in local]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(ids[i] for i in matches)
        sys.exit(f"ERROR: cannot tell which server of {path} this is (servers: {', '.join(ids)}; matching an "
                 f"address of this machine: {found}); set SERVER_ID to this server's server_id")
    index = matches[0]
try:
    rows = [(int(d["device_id"]), int(d["rank_id"])) for d in servers[index]["device"]]
except (KeyError, TypeError, ValueError) as err:
    sys.exit(f"ERROR: {path} is not a usable rank table (server_list[{index}].device[].device_id/rank_id): "
             f"{type(err).__name__}: {err}")
if not rows:
    sys.exit(f"ERROR: server {ids[index]} of {path} has no devices")
print(total, ids[index])
for device_id, rank_id in rows:
    print(device_id, rank_id)
PY
}

# rank_table_train_main SCRIPT ARGS...   (run_distribute_train_ascend.sh RANK_TABLE CONFIG [--key value ...])
# One process per device of this server (see rank_table_devices; run the same command on every server of a
# multi-server table), each with DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported, bound to its
# share of the CPU cores with taskset when available, logging to LOG_DIR/rank_<RANK_ID>/log.txt.
rank_table_train_main() {
    local script="$1"
    shift
    local usage="bash ${script} RANK_TABLE CONFIG [--key value ...]   (SERVER_ID picks this server of a multi-server table)"
    [ $# -ge 2 ] || usage_exit "$usage" "missing RANK_TABLE and/or CONFIG"
    local table config
    table="$(require_file "$usage" "rank table" "$1")" || exit 1
    config="$(require_file "$usage" "config file" "$2")" || exit 1
    shift 2
    take_extra_args "$usage" "$@"
    local rows
    rows="$(rank_table_devices "$table")" || usage_exit "$usage" "cannot read the rank table $table"
    local rank_size server_id local_n
    read -r rank_size server_id <<< "$(echo "$rows" | head -n 1)"
    local_n=$(( $(echo "$rows" | wc -l) - 1 ))
    init_log_dir "train_parallel_ascend"
    local cores per bind_ok=0
    cores="$(nproc 2>/dev/null || echo 1)"
    per=$(( cores / local_n ))
    if command -v taskset >/dev/null 2>&1 && [ "$per" -ge 1 ]; then
        bind_ok=1
    fi
    echo "Rank table: ${table}; RANK_SIZE=${rank_size}; server ${server_id}: ${local_n} process(es)"
    local pids=() ranks=() i=0 device_id rank_id
    while read -r device_id rank_id; do
        local work="${LOG_DIR}/rank_${rank_id}"
        mkdir -p "$work"
        [ -f "$work/log.txt" ] && mv -f "$work/log.txt" "$work/log.txt.prev"
        local bind=()
        if [ "$bind_ok" -eq 1 ]; then
            bind=(taskset -c "$(( i * per ))-$(( i * per + per - 1 ))")
        fi
        echo "rank ${rank_id}: DEVICE_ID=${device_id} ${bind[*]:+(${bind[*]}) }log ${work}/log.txt" | tee -a "$LOG_FILE"
        (
            cd "$REPO_ROOT" || exit 1
            export DEVICE_ID="$device_id" RANK_ID="$rank_id" RANK_SIZE="$rank_size" RANK_TABLE_FILE="$table"
            exec "${bind[@]}" "$PYTHON" train.py --config_path "$config" --device_target Ascend \
                --run_distribute True "${EXTRA_ARGS[@]}"
        ) > "${work}/log.txt" 2>&1 &
        pids+=($!)
        ranks+=("$rank_id")
        i=$(( i + 1 ))
    done < <(echo "$rows" | tail -n +2)
    local status=0 k rc
    for k in "${!pids[@]}"; do
        wait "${pids[$k]}"
        rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "rank ${ranks[$k]} failed (exit status ${rc}); see ${LOG_DIR}/rank_${ranks[$k]}/log.txt" | tee -a "$LOG_FILE" >&2
            status=$rc
        fi
    done
    finish "$status" "Distributed training"
}

# export_main SCRIPT ARGS...   (run_export.sh CONFIG CHECKPOINT [FORMAT] [--key value ...])
export_main() {
    local script="$1"
    shift
    local usage="bash ${script} CONFIG CHECKPOINT [MINDIR|ONNX|AIR] [--key value ...]"
    [ $# -ge 2 ] || usage_exit "$usage" "missing CONFIG and/or CHECKPOINT"
    local config ckpt format_args=()
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    ckpt="$(require_file "$usage" "checkpoint" "$2")" || exit 1
    shift 2
    if [ $# -ge 1 ] && [[ "$1" != --* ]]; then
        local fmt
        fmt="$(echo "$1" | tr '[:lower:]' '[:upper:]')"
        case "$fmt" in
            MINDIR|ONNX|AIR) format_args=(--export_format "$fmt") ;;
            *) usage_exit "$usage" "FORMAT must be MINDIR, ONNX or AIR, got '$1'" ;;
        esac
        shift
    fi
    take_extra_args "$usage" "$@"
    init_log_dir "export"
    run_logged "$LOG_FILE" "$PYTHON" export.py --config_path "$config" --checkpoint_file_path "$ckpt" \
        --output_path "$LOG_DIR" "${format_args[@]}" "${EXTRA_ARGS[@]}"
    finish $? "Export"
}
