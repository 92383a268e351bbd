#!/usr/bin/env bash
# Evaluate an ONNX export with onnxruntime on CPU (eval_onnx.py: eval.py's pipeline and output lines); logs in <calling folder>/logs/eval_onnx_cpu/.
# Usage: bash run_eval_onnx_cpu.sh CONFIG ONNX_FILE [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
eval_onnx_main CPU "$(basename "$0")" "$@"
