#!/usr/bin/env python3
"""Side-by-side CPU timing against the original PyTorch code, in one run (the table of README's speed section).

    python benchmarks/compare_reference.py [--torch-python /tmp/torch-venv/bin/python] [--rounds 2]
        [--what infer:soft_tiny,train:soft_tiny,infer:soft_norm_tiny,train:soft_norm_tiny,
                infer:SwiftFormer_XS,train:SwiftFormer_XS]

It reuses ../shared/bench/side_by_side.py (its PyTorch child and its ``run``: every measurement in a fresh
process, batch 8 at 224x224, float32, median of 5 timed calls after 2 warm-up calls, the two frameworks
alternating ``--rounds`` times). Our side is what this project ships: ``infer`` applies the inference pass
``models.fuse_for_inference`` (with the CPU kernels when ``make kernels`` built them), ``train`` times the
plain framework train cell (forward + cross-entropy + backward + AdamW), as the reference side does, and
then train.py's own step (``src.train_step.build_train_step``: the recipe's AdamW, clipping, device-side
counters) so that its cost over the plain cell shows: the two alternate call by call in one process (8 calls
each per round), and the ratio is the median of step / plain over those pairs, because separate processes of
the same code differ by up to 20% on a shared host.
The torch interpreter: ``python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install
torch==2.13.0+cpu 'numpy<2' pyyaml einops`` (the reference SOFT and SwiftFormer code import einops). Prints one line per item, then a Markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("SOFT_SHARED", REPO.parent / "shared")) / "bench"

ALL = ("infer:soft_tiny,train:soft_tiny,infer:soft_norm_tiny,train:soft_norm_tiny,"
       "infer:SwiftFormer_XS,train:SwiftFormer_XS")

#: our child process: argv = [script, ref dir, mode, model, batch, size]; prints the sorted step times (JSON)
MS_CHILD = r'''
import json, os, sys, time
sys.path.insert(0, os.getcwd())
import numpy as np
import mindspore as ms
from mindspore import nn
from models import create_model, fuse_for_inference
ms.set_context(mode=ms.GRAPH_MODE)
mode, name, bs, size = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
x = ms.Tensor(np.random.default_rng(0).standard_normal((bs, 3, size, size)).astype(np.float32))
labels = np.random.default_rng(1).integers(0, 1000, bs)

def plain_cell():  # the framework's train cell, as side_by_side.py times it
    net = create_model(name, num_classes=1000)
    class Loss(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.ce = nn.CrossEntropyLoss()
        def construct(self, x, y):
            out = self.net(x)
            if isinstance(out, tuple):
                out = (out[0] + out[1]) / 2
            return self.ce(out, y)
    cell = nn.TrainOneStepCell(Loss(net), nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-4))
    cell.set_train(True)
    y = ms.Tensor(labels.astype(np.int32))
    return lambda: cell(x, y).asnumpy()

def shipped_step():  # what train.py runs: the builder's network and the recipe's train step
    from src.builder import build_network
    from src.model_utils.config import make_config
    from src.train_step import build_train_step
    config = make_config({"backbone": name, "class_num": 1000, "clip_grad": 1.0, "lr_max": 1e-4})
    net, _ = build_network(config, "train")
    cell = build_train_step(config, net)
    y = ms.Tensor(np.eye(1000, dtype=np.float32)[labels])
    return lambda: cell(x, y)[0].asnumpy()

def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start

if mode == "infer":
    net = create_model(name, num_classes=1000)
    fuse_for_inference(net)
    steps = [lambda: net(x).asnumpy()]
elif mode == "pair":  # train.py's step and the plain cell, alternating in this one process
    steps = [shipped_step(), plain_cell()]
else:
    steps = [plain_cell()]
for step in steps:
    for _ in range(2):
        step()
times = [[] for _ in steps]
for _ in range(8 if mode == "pair" else 5):
    for step, record in zip(steps, times):
        record.append(timed(step))
print(json.dumps({"step": times[0], "plain": times[1]} if mode == "pair" else sorted(times[0])))
'''


def _pair(name, rounds):
    """train.py's step against the plain cell, alternating call by call in one process per round:
    (median step time, median of the per-call ratios step / plain)."""
    step_times, ratios = [], []
    for _ in range(rounds):
        fd, script = tempfile.mkstemp(suffix=".py")  # graph mode compiles from a source file
        with os.fdopen(fd, "w") as f:
            f.write(MS_CHILD)
        try:
            r = subprocess.run([sys.executable, script, str(BENCH / "ref"), "pair", name, "8", "224"],
                               capture_output=True, text=True, timeout=900, env=dict(os.environ, GLOG_v="3"))
        finally:
            os.remove(script)
        if r.returncode != 0:
            raise RuntimeError(f"train step of {name} failed: {r.stderr[-800:]}")
        times = json.loads(r.stdout.strip().splitlines()[-1])
        step_times += times["step"]
        ratios += [step / plain for step, plain in zip(times["step"], times["plain"])]
    return statistics.median(step_times), statistics.median(ratios)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default="/tmp/torch-venv/bin/python", help="a python with torch")
    parser.add_argument("--what", default=ALL, help="comma list of infer:<model> / train:<model>")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per item (default 2)")
    parser.add_argument("--no-train-step", dest="train_step", action="store_false",
                        help="do not also time train.py's step (build_train_step) for train items")
    args = parser.parse_args(argv)
    if not (BENCH / "side_by_side.py").is_file():
        parser.error(f"{BENCH / 'side_by_side.py'} not found (put shared/ beside the clone or set SOFT_SHARED)")
    sys.path.insert(0, str(BENCH))
    import side_by_side  # pylint: disable=import-outside-toplevel

    os.chdir(REPO)  # the child imports models from its working directory
    rows = []
    for item in args.what.split(","):
        mode, name = item.split(":")
        t_ref, t_ours = [], []
        for _ in range(args.rounds):
            t_ref.append(side_by_side.run(args.torch_python, side_by_side.TORCH_CHILD, str(BENCH / "ref"), mode, name))
            t_ours.append(side_by_side.run(sys.executable, MS_CHILD, str(BENCH / "ref"), mode, name))
        ref, ours = statistics.median(t_ref), statistics.median(t_ours)
        print(f"{item}: reference {ref * 1000:.0f} ms {[round(t * 1000) for t in t_ref]}, "
              f"ours {ours * 1000:.0f} ms {[round(t * 1000) for t in t_ours]}", flush=True)
        work = "forward" if mode == "infer" else "forward + backward + AdamW"
        rows.append(f"| {name} {work} | {ref * 1000:.0f} ms | {ours * 1000:.0f} ms | {ours / ref:.2f} |")
        if mode == "train" and args.train_step:
            shipped, ratio = _pair(name, args.rounds)
            print(f"{item}: train.py's step (build_train_step: recipe, clipping, counters) {shipped * 1000:.0f} ms, "
                  f"{ratio:.2f} x the plain cell (alternating in one process)", flush=True)
            rows.append(f"| {name} train.py's step (`build_train_step`) | - | {shipped * 1000:.0f} ms | "
                        f"{shipped / ref:.2f} ({ratio:.2f} x the plain cell) |")
    print("\n| work | reference | ours | ratio |\n|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
