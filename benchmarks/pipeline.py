#!/usr/bin/env python3
"""Input-pipeline throughput: ours (``src.dataset.create_dataset``) against the plain MindSpore pipeline.

    python benchmarks/pipeline.py --data /tmp/photos --workers 2 --batch-size 64

``--data`` is an ImageFolder root with ``train/`` (and ``val/``; without it the evaluation runs on
``train/``). Both pipelines get the same workers, batch size and crop size and run in the same
process, alternately (``--rounds`` times), so background load hits both alike:

* training, ours: the soft_tiny recipe's data settings (random resized crop with ``--interpolation``,
  default ``random`` as the recipe, flip, ``rand-m9-mstd0.5-inc1``, label smoothing; MixUp, CutMix and
  erasing off unless given with ``--set``); plain: ``ImageFolderDataset`` + ``RandomCropDecodeResize``
  with the same interpolation (``random``: a ``RandomChoice`` of a bilinear and a bicubic one) + flip +
  ``RandAugment(2, 9)`` + ``Normalize`` + ``HWC2CHW``;
* evaluation, ours: ``create_dataset(training=False)``; plain: ``ImageFolderDataset`` + ``Decode`` +
  ``Resize`` + ``CenterCrop`` + ``Normalize`` + ``HWC2CHW`` with the same resize and interpolation.

A round builds the pipeline, skips ``--warmup`` batches and times the next ``--batches`` batches
(images/s, and the process's CPU time per image). The manifest of ours is built before the first round
(not timed). Printed: every round, then per pipeline the total images over the total time of all rounds
and the ratio ours / plain (above 1: ours is faster), and the same for CPU time per image (plain / ours).
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ImageFolder root holding train/ (and val/)")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers of both pipelines")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224, help="crop size (training and evaluation)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per pipeline")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches at the start of a round")
    parser.add_argument("--interpolation", default="random", help="ours: interpolation of the random crop")
    parser.add_argument("--mode", choices=("train", "eval", "both"), default="both")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more config overrides for ours, e.g. mixup=0.8 cutmix=1.0 reprob=0.25")
    return parser.parse_args(argv)


def our_config(args, root, class_num):
    from src.model_utils.config import make_config
    values = dict(dataset_path=str(root), class_num=class_num, train_image_size=args.image_size,
                  eval_image_size=args.image_size, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                  train_num_workers=args.workers, eval_num_workers=args.workers, interpolation=args.interpolation,
                  randaugment="rand-m9-mstd0.5-inc1", hflip=0.5, use_label_smooth=True, label_smooth_factor=0.1,
                  mixup=0.0, cutmix=0.0, reprob=0.0, crop_pct=0.875, eval_interpolation="bicubic", seed=1)
    for item in args.set:
        key, _, value = item.partition("=")
        values[key] = value
    return make_config(values)


def plain_train(args, folder):
    import mindspore.dataset as ds
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V
    from src.dataset import IMAGENET_MEAN, IMAGENET_STD, _inter
    names = ("bilinear", "bicubic") if args.interpolation == "random" else (args.interpolation,)
    crops = [V.RandomCropDecodeResize(args.image_size, scale=(0.08, 1.0), interpolation=_inter(name))
             for name in names]
    data = ds.ImageFolderDataset(folder, num_parallel_workers=args.workers, shuffle=True)
    ops = [crops[0] if len(crops) == 1 else T.RandomChoice(crops), V.RandomHorizontalFlip(),
           V.RandAugment(2, 9), V.Normalize(IMAGENET_MEAN, IMAGENET_STD), V.HWC2CHW()]
    data = data.map(ops, input_columns="image", num_parallel_workers=args.workers)
    return data.batch(args.batch_size, drop_remainder=True)


def plain_eval(args, folder, config):
    import mindspore.dataset as ds
    import mindspore.dataset.vision as V
    from src.dataset import IMAGENET_MEAN, IMAGENET_STD, _inter, eval_resize_size
    data = ds.ImageFolderDataset(folder, num_parallel_workers=args.workers, shuffle=False)
    ops = [V.Decode(), V.Resize(eval_resize_size(config), interpolation=_inter(config.eval_interpolation, True)),
           V.CenterCrop(args.image_size), V.Normalize(IMAGENET_MEAN, IMAGENET_STD), V.HWC2CHW()]
    data = data.map(ops, input_columns="image", num_parallel_workers=args.workers)
    return data.batch(args.batch_size, drop_remainder=False)


def timed(make, args):
    """(images, seconds, CPU seconds of the process) of ``--batches`` batches after ``--warmup``; the
    dataset repeats when short."""
    data = make().repeat()
    iterator = data.create_tuple_iterator(output_numpy=True, num_epochs=1)
    images, start, cpu_start = 0, None, None
    for step, (image, _) in enumerate(iterator):
        if step == args.warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        if step >= args.warmup:
            images += image.shape[0]
        if step + 1 == args.warmup + args.batches:
            break
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    iterator.stop()
    return images, seconds, cpu_seconds


def compare(name, ours, plain, args):
    totals = {"ours": [0, 0.0, 0.0], "plain": [0, 0.0, 0.0]}
    for round_index in range(args.rounds):
        order = (("ours", ours), ("plain", plain)) if round_index % 2 == 0 else (("plain", plain), ("ours", ours))
        for label, make in order:
            images, seconds, cpu_seconds = timed(make, args)
            for i, value in enumerate((images, seconds, cpu_seconds)):
                totals[label][i] += value
            print(f"  {name} round {round_index + 1}: {label:5s} {images / seconds:8.1f} img/s, "
                  f"{1e3 * cpu_seconds / images:6.2f} CPU-ms/img", flush=True)
    ours_rate, plain_rate = (totals[k][0] / totals[k][1] for k in ("ours", "plain"))
    ours_cpu, plain_cpu = (1e3 * totals[k][2] / totals[k][0] for k in ("ours", "plain"))
    print(f"{name}: ours {ours_rate:.1f} img/s, plain MindSpore {plain_rate:.1f} img/s, "
          f"ratio {ours_rate / plain_rate:.2f}", flush=True)
    print(f"{name} CPU time: ours {ours_cpu:.2f} ms/img, plain MindSpore {plain_cpu:.2f} ms/img, "
          f"ratio {plain_cpu / ours_cpu:.2f} (less sensitive to background load)", flush=True)
    return ours_rate, plain_rate


def main(argv=None):
    args = parse_args(argv)
    from src.dataset import create_dataset, resolve_eval_folder, resolve_train_folder
    from src.image_manifest import class_folders

    root = Path(args.data)
    train_folder = resolve_train_folder(our_config(args, root, 1))
    config = our_config(args, root, len(class_folders(train_folder)))
    eval_folder = str(root / "val") if (root / "val").is_dir() else train_folder
    config.eval_path = eval_folder
    print(f"data {root}: train {train_folder}, eval {resolve_eval_folder(config)}; workers {args.workers}, "
          f"batch {args.batch_size}, crop {args.image_size}, {args.rounds} rounds of {args.batches} batches "
          f"after {args.warmup}", flush=True)
    started = time.perf_counter()
    create_dataset(config, training=True)  # builds (or reuses) the manifests before timing
    create_dataset(config, training=False)
    print(f"data setup (manifests): {time.perf_counter() - started:.2f} s", flush=True)
    if args.mode in ("train", "both"):
        compare("train", lambda: create_dataset(config, training=True)[0], lambda: plain_train(args, train_folder),
                args)
    if args.mode in ("eval", "both"):
        compare("eval", lambda: create_dataset(config, training=False)[0],
                lambda: plain_eval(args, eval_folder, config), args)


if __name__ == "__main__":
    main()
