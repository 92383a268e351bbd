"""One data-parallel worker for tests/test_distributed.py (started by msrun): trains a few steps on its
shard, then evaluates with the distributed evaluation engine.

    msrun --worker_num=2 --local_worker_num=2 ... tests/distributed_worker.py DATASET OUT_DIR STEPS
Writes OUT_DIR/rank{R}.npz (the trained weights) and OUT_DIR/rank{R}.json (accuracy and image count);
rank 0 also writes OUT_DIR/trained.ckpt.
"""
import json
import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402

from src.cross_entropy import get_loss  # noqa: E402
from src.dataset import create_dataset  # noqa: E402
from src.eval_engine import EvalEngine  # noqa: E402
from src.lr_generator import lr_from_config  # noqa: E402
from src.model_utils.config import make_config  # noqa: E402
from src.optimizer import build_optimizer  # noqa: E402
from src.trainer import TrainStep, average_batchnorm_statistics, build_network, init_env  # noqa: E402

WORKER_CONFIG = dict(backbone="soft_tiny", class_num=10, train_image_size=32, eval_image_size=32, crop_pct=1.0,
                     batch_size=8, eval_batch_size=16, dataset_fraction=0.25, max_epoch=1, warmup_epochs=0,
                     lr_max=5e-4, run_distribute=True, device_target="CPU", seed=7, hflip=0.0,
                     train_num_workers=1, eval_num_workers=1, verify_images=False)


def main(dataset, out_dir, steps):
    config = make_config(dict(WORKER_CONFIG, dataset_path=dataset))
    rank_id, rank_size = init_env(config)
    train_ds, _ = create_dataset(config, True, rank_id, rank_size)
    eval_ds, _ = create_dataset(config, False, rank_id, rank_size)
    net = build_network(config)
    optimizer = build_optimizer(config, net.trainable_params(), lr_from_config(config, train_ds.get_dataset_size()))
    step = TrainStep(net, get_loss(config), optimizer, rank_size=rank_size)
    step.set_train(True)
    for i, (image, label) in enumerate(train_ds.create_tuple_iterator(num_epochs=1)):
        if i == steps:
            break
        step(image, label)
    average_batchnorm_statistics(net, rank_size)
    np.savez(os.path.join(out_dir, f"rank{rank_id}.npz"), **{p.name: p.asnumpy() for p in net.get_parameters()})
    if rank_id == 0:
        ms.save_checkpoint(net, os.path.join(out_dir, "trained.ckpt"), crc_check=True)
    result = EvalEngine(net, eval_ds, rank_size).evaluate()
    with open(os.path.join(out_dir, f"rank{rank_id}.json"), "w", encoding="utf-8") as fh:
        json.dump({"top1": float(result["top1"]), "count": int(result["count"]), "rank_size": rank_size}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
