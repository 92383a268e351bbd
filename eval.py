"""Evaluate a checkpoint on the evaluation set.

    python eval.py --config_path config/SOFT_tiny_demo_cpu.yml --dataset_path data/digits \
        --checkpoint_file_path output/demo/best.ckpt

Prints ``accuracy=0.784420, per step time: ...s, total cost time: ...s`` and the top-5 accuracy.
A checkpoint written by train.py is evaluated as its training evaluated it: with the EMA weights when those
gave its accuracy, and with its evaluation preprocessing (``src/checkpoint_settings.py``; a key given on the
command line wins, with one line saying so). The checkpoint is ``checkpoint_file_path`` (``ckpt_file``), else
``pretrained`` (the original port's SOFT_eval.yml).
Padding samples of multi-rank evaluation (label -1) are not counted. A checkpoint that does not fit
the model is reported in one sentence (naming both backbones when it holds another one).
"""
import sys


def run_eval(config):
    from src.builder import build_network
    from src.checkpoint_settings import apply_checkpoint_settings
    from src.dataset import create_dataset
    from src.eval_engine import EvalEngine
    from src.logging import library_console
    from src.metric import print_eval_result
    from src.trainer import init_env

    library_console()  # the input pipeline's notices (skipped / ignored files, image cache progress)
    rank_id, rank_size = init_env(config)
    apply_checkpoint_settings(config, log=print if rank_id == 0 else (lambda _line: None))
    dataset, class_names = create_dataset(config, False, rank_id, rank_size)
    net, meta = build_network(config, "eval")
    saved_names = meta.get("class_names")
    if saved_names is not None and list(saved_names) != list(class_names):
        print(f"WARNING: the checkpoint was trained on classes {saved_names}, the evaluation set has "
              f"{list(class_names)}; accuracy compares class indices.", file=sys.stderr)
    engine = EvalEngine(net, dataset, rank_size)
    compile_seconds = engine.compile()
    if rank_id == 0:
        print(f"compile time used={compile_seconds:.2f}s", flush=True)
    result = engine.evaluate()
    if rank_id == 0:
        print_eval_result(result)
    return result


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job

    return run_job(run_eval, argv)


if __name__ == "__main__":
    sys.exit(main())
