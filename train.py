"""Train a registered backbone from a YAML config.

    python train.py --config_path config/SOFT_tiny_demo_cpu.yml --dataset_path data/digits --output_path output/demo

Every config key can be overridden on the command line (``--key value``). ``--resume PATH`` (or
``--resume auto``: the newest readable checkpoint in the checkpoint folder) continues an interrupted run.
Exit status: 0 on success; 1 for a configuration / data / checkpoint mistake or a checkpoint that could not
be saved (one-line message); 3 when the loss became NaN / Inf (the last good checkpoint is kept and named);
130 / 143 when interrupted by SIGINT / SIGTERM (during Model.train MindSpore delivers a Ctrl-C as SIGTERM: 143;
every saved checkpoint is intact; resume with --resume auto).
"""
import sys


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job
    from src.trainer import CheckpointSaveError, TrainingDiverged, TrainingInterrupted, run_training

    return run_job(run_training, argv, exit_codes={TrainingDiverged: 3, CheckpointSaveError: 1,
                                                   TrainingInterrupted: 1})


if __name__ == "__main__":
    sys.exit(main())
