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
# oneDNN's AVX-512 convolution path falls back to a very slow reference kernel on some CPUs
export ONEDNN_MAX_CPU_ISA="${ONEDNN_MAX_CPU_ISA:-AVX2}"

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

# check_extra_args USAGE ARGS...: pass-through arguments must start with --key.
check_extra_args() {
    local usage="$1"
    shift
    if [ $# -gt 0 ] && [[ "$1" != --* ]]; then
        usage_exit "$usage" "unexpected argument '$1' (extra arguments are --key value pairs)"
    fi
}

# resolve_extra_args ARGS...: sets the array EXTRA_ARGS to ARGS with every value that names an existing
# file or folder relative to the calling folder made absolute (Python runs from the repository root).
resolve_extra_args() {
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
    check_extra_args "$usage" "$@"
    resolve_extra_args "$@"
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
    check_extra_args "$usage" "$@"
    resolve_extra_args "$@"
    single_device_env "$target"
    init_log_dir "eval_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    run_logged "$LOG_FILE" "$PYTHON" eval.py --config_path "$config" --device_target "$target" \
        "${DEVICE_ARGS[@]}" "${ckpt_args[@]}" "${EXTRA_ARGS[@]}"
    finish $? "Evaluation"
}

# msrun_train_main TARGET SCRIPT DEFAULT_WORKERS ARGS...   (CONFIG [N] [--key value ...], through msrun)
msrun_train_main() {
    local target="$1" script="$2" default_n="$3"
    shift 3
    local what="DEVICE_NUM"
    [ "$target" = "CPU" ] && what="WORKERS"
    local usage="bash ${script} CONFIG [${what}] [--key value ...]"
    [ $# -ge 1 ] || usage_exit "$usage" "missing CONFIG"
    local config n="$default_n"
    config="$(require_file "$usage" "config file" "$1")" || exit 1
    shift
    if [ $# -ge 1 ] && [[ "$1" != --* ]]; then
        require_positive_int "$usage" "$what" "$1"
        n="$1"
        shift
    fi
    check_extra_args "$usage" "$@"
    resolve_extra_args "$@"
    if ! command -v "$MSRUN" >/dev/null 2>&1; then
        echo "ERROR: '$MSRUN' not found: msrun comes with MindSpore >= 2.3 (pip install mindspore)" >&2
        exit 1
    fi
    init_log_dir "train_parallel_$(echo "$target" | tr '[:upper:]' '[:lower:]')"
    echo "Workers: ${n}; per-worker logs: ${LOG_DIR}/worker_<rank>.log"
    run_logged "$LOG_FILE" "$MSRUN" --worker_num="$n" --local_worker_num="$n" \
        --master_port="${MASTER_PORT:-8118}" --log_dir="$LOG_DIR" --join=True \
        train.py --config_path "$config" --device_target "$target" --run_distribute True "${EXTRA_ARGS[@]}"
    finish $? "Distributed training"
}

# rank_table_devices FILE SERVER_INDEX: prints "RANK_SIZE" then one "DEVICE_ID RANK_ID" line per device of
# server SERVER_INDEX of a rank table (version 1.0 layout: server_list[].device[].{device_id,rank_id}).
rank_table_devices() {
    "$HELPER_PYTHON" - "$1" "$2" <<'PY'
import json, sys
path, index = sys.argv[1], int(sys.argv[2])
try:
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    servers = table["server_list"]
    total = sum(len(s["device"]) for s in servers)
    devices = servers[index]["device"]
    rows = [(int(d["device_id"]), int(d["rank_id"])) for d in devices]
except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
    sys.exit(f"ERROR: {path} is not a usable rank table (server_list[{index}].device[].device_id/rank_id): "
             f"{type(err).__name__}: {err}")
if not rows:
    sys.exit(f"ERROR: server {index} of {path} has no devices")
print(total)
for device_id, rank_id in rows:
    print(device_id, rank_id)
PY
}

# rank_table_train_main SCRIPT ARGS...   (run_distribute_train_ascend.sh RANK_TABLE CONFIG [--key value ...])
# One process per device of this server (SERVER_INDEX, default 0, picks the server of a multi-server
# table), each with DEVICE_ID / RANK_ID / RANK_SIZE / RANK_TABLE_FILE exported, bound to its share of
# the CPU cores with taskset when available, logging to LOG_DIR/rank_<RANK_ID>/log.txt.
rank_table_train_main() {
    local script="$1"
    shift
    local usage="bash ${script} RANK_TABLE CONFIG [--key value ...]"
    [ $# -ge 2 ] || usage_exit "$usage" "missing RANK_TABLE and/or CONFIG"
    local table config
    table="$(require_file "$usage" "rank table" "$1")" || exit 1
    config="$(require_file "$usage" "config file" "$2")" || exit 1
    shift 2
    check_extra_args "$usage" "$@"
    resolve_extra_args "$@"
    local rows
    rows="$(rank_table_devices "$table" "${SERVER_INDEX:-0}")" || usage_exit "$usage" "cannot read the rank table $table"
    local rank_size local_n
    rank_size="$(echo "$rows" | head -n 1)"
    local_n=$(( $(echo "$rows" | wc -l) - 1 ))
    init_log_dir "train_parallel_ascend"
    local cores per bind_ok=0
    cores="$(nproc 2>/dev/null || echo 1)"
    per=$(( cores / local_n ))
    if command -v taskset >/dev/null 2>&1 && [ "$per" -ge 1 ]; then
        bind_ok=1
    fi
    echo "Rank table: ${table}; RANK_SIZE=${rank_size}; ${local_n} process(es) on this server"
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
    check_extra_args "$usage" "$@"
    resolve_extra_args "$@"
    init_log_dir "export"
    run_logged "$LOG_FILE" "$PYTHON" export.py --config_path "$config" --checkpoint_file_path "$ckpt" \
        --output_path "$LOG_DIR" "${format_args[@]}" "${EXTRA_ARGS[@]}"
    finish $? "Export"
}
