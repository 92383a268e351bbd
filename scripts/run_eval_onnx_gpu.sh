#!/usr/bin/env bash
# Evaluate an ONNX export with onnxruntime's CUDA provider (onnxruntime-gpu) on GPU DEVICE_ID (default 0); logs in <calling folder>/logs/eval_onnx_gpu/.
# Usage: bash run_eval_onnx_gpu.sh CONFIG ONNX_FILE [--key value ...]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
eval_onnx_main GPU "$(basename "$0")" "$@"
