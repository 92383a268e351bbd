"""Train a registered backbone from a YAML config.

    python train.py --config_path config/SOFT_tiny_demo_cpu.yml --dataset_path data/digits --output_path output/demo

Every config key can be overridden on the command line (``--key value``). ``--resume PATH`` (or
``--resume auto``: the newest checkpoint in the output folder) continues an interrupted run.
Exit status: 0 on success, 1 for a configuration / data / checkpoint mistake (one-line message),
3 when the loss became NaN / Inf (the last good checkpoint is kept and named).
"""
import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import sys  # noqa: E402


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job
    from src.trainer import TrainingDiverged, run_training

    return run_job(run_training, argv, exit_codes={TrainingDiverged: 3})


if __name__ == "__main__":
    sys.exit(main())
