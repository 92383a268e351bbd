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
import traceback  # noqa: E402


def main(argv=None):
    from src.model_utils.config import ConfigError, load_config
    from src.trainer import TrainingDiverged, run_training

    try:
        config = load_config(argv)
        if getattr(config, "enable_modelarts", False):
            from src.model_utils.moxing_adapter import moxing_wrapper
            moxing_wrapper(config)(run_training)(config)
        else:
            run_training(config)
    except TrainingDiverged as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 3
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("SOFT_DEBUG"):
            traceback.print_exc()
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
