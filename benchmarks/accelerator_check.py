#!/usr/bin/env python3
"""Accelerator check of the portable graph: what GPU and Ascend would compile, checked on CPU.

    python benchmarks/accelerator_check.py [--models soft_tiny,SwiftFormer_XS] [--json out.json] [--newton-loop]

No accelerator is needed (or used): for each model, in a fresh process with the CPU speed layer switched off
(``SOFT_CPU_KERNELS=0``, so the network is the portable one every device runs), it builds what train.py and
eval.py build from the model's own config (``config/<model>.yml``: its mixed precision, EMA, clipping and loss
scaling), compiles the train step (``src.train_step.build_train_step``) and the evaluation network
(``src.builder.build_network(config, "eval")``, the inference pass included), and reads the primitives of the
compiled graph from MindSpore's IR after the frontend passes (``*_validate_*.ir``: autodiff done, nothing
device-specific yet). Each primitive is checked against MindSpore's own documentation of the operator: the
"Supported Platforms" of the primitive's docstring, or of the function it refers to. Verdicts:

* ``ok``: documented for Ascend and GPU;
* ``cpu-only`` / ``custom``: documented for CPU only, or a ``Custom`` operator: an error (the portable graph
  must hold neither);
* ``partly documented`` (documented, but not for both accelerators) and ``undocumented`` (MindSpore documents no
  platforms for it, e.g. most gradient operators): named, with what is known in ``REVIEWED``; an operator
  that is in neither class of verdict and not in ``REVIEWED`` is an error too, so a new one is looked at.

It also reports the number of operators of each train graph and its compile time on this CPU (a second
compile in a fresh process, without IR dumping). ``--newton-loop`` adds, for the SOFT models, the train graph
with the Newton steps as a graph-mode while loop instead of unrolled (every block has 20 steps of two batched
matmuls), its size and compile time, and whether its logits equal the unrolled form's.

Exit status: 0 when no model has an error verdict; 1 otherwise.
"""
import argparse
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mindspore as ms
from mindspore import ops

REPO = Path(__file__).resolve().parents[1]

MODELS = ("soft_tiny", "soft_huge", "soft_norm_tiny", "SwiftFormer_XS", "SwiftFormer_L3")
ACCELERATORS = ("Ascend", "GPU")

#: graph plumbing, not device operators: left out of the counts and the check
STRUCTURAL = frozenset({"Load", "UpdateState", "MakeTuple", "TupleGetItem", "Depend", "Return", "MakeList",
                        "ListGetItem", "Switch", "SwitchLayer", "Partial"})

#: operators whose own docstring names no platforms (or not both accelerators), with the public API they come
#: from: ("emitted", API) when MindSpore writes that documented API as this primitive, ("gradient", API) for the
#: gradient of that API's operator (MindSpore documents no platforms for gradient operators), ("internal", None)
#: for a copy MindSpore inserts itself. The API's own "Supported Platforms" are checked too.
REVIEWED = {
    "AssignAdd": ("emitted", "mindspore.ops.assign_add"),
    "Divs": ("emitted", "mindspore.ops.div"),             # tensor / Python number
    "LessScalar": ("emitted", "mindspore.ops.less"),      # tensor < Python number
    "MatMulExt": ("emitted", "mindspore.ops.matmul"),
    "Muls": ("emitted", "mindspore.ops.mul"),             # tensor * Python number
    "PowTensorScalar": ("emitted", "mindspore.ops.pow"),  # x ** 2 in autodiff's gradient of Erf (exact GELU)
    "SplitWithSize": ("emitted", "mindspore.ops.split"),
    "SumExt": ("emitted", "mindspore.ops.sum"),
    "BatchNormGrad": ("gradient", "mindspore.ops.batch_norm"),
    "BiasAddGrad": ("gradient", "mindspore.ops.bias_add"),
    "Conv2DBackpropFilter": ("gradient", "mindspore.ops.conv2d"),
    "Conv2DBackpropInput": ("gradient", "mindspore.ops.conv2d"),
    "DropoutGrad": ("gradient", "mindspore.ops.dropout"),
    "GeLUGrad": ("gradient", "mindspore.ops.gelu"),
    "LayerNormGrad": ("gradient", "mindspore.ops.LayerNorm"),
    "LogSoftmaxGrad": ("gradient", "mindspore.ops.log_softmax"),
    "ReluGrad": ("gradient", "mindspore.ops.relu"),
    "SoftmaxBackward": ("gradient", "mindspore.ops.softmax"),
    "SqrtGrad": ("gradient", "mindspore.ops.sqrt"),
    "StridedSliceGrad": ("gradient", "mindspore.ops.strided_slice"),  # the gradient of x[a:b]
    "TensorMove": ("internal", None),  # the copy of a parameter's value MindSpore inserts (e.g. scale * 1.0)
}

_NODE = re.compile(r"^\s+%\d+\([^)]*\) = (?:PrimFunc_)?([A-Za-z_][A-Za-z0-9_]*)\(")
_TRACE = re.compile(r"^\s+# In file (.+?):(\d+)")
_PLATFORMS = re.compile(r"Supported Platforms:\s*((?:``\w+``\s*)+)")
_REFERS = re.compile(r"[Rr]efer to :func:`(mindspore\.ops\.[\w.]+)`")
_MODULES = ("mindspore.ops.auto_generate.gen_ops_prim", "mindspore.ops.operations",
            "mindspore.ops.operations.manually_defined.ops_def", "mindspore.ops.operations.nn_ops",
            "mindspore.ops.operations.math_ops", "mindspore.ops.operations.array_ops",
            "mindspore.ops.operations.other_ops", "mindspore.ops.operations.inner_ops",
            "mindspore.ops.operations._inner_ops", "mindspore.ops.operations._grad_ops")


# ------------------------------------------------------------------------------------------- graph reading
def graph_primitives(ir_text):
    """(Counter of the device operators: primitive name -> nodes, {primitive: "file:line"}) of one IR file's text;
    the second names, for each primitive, the innermost line of this project that produced its first node."""
    counter, where, current, located = collections.Counter(), {}, None, None
    for line in ir_text.splitlines():
        node = _NODE.match(line)
        if node:
            if current and located and current not in where:
                where[current] = located
            current, located = node.group(1), None
            if current in STRUCTURAL:
                current = None
            else:
                counter[current] += 1
            continue
        trace = _TRACE.match(line)
        if current and trace and trace.group(1).startswith(str(REPO) + os.sep):
            located = f"{os.path.relpath(trace.group(1), REPO)}:{trace.group(2)}"
    if current and located and current not in where:
        where[current] = located
    return counter, where


def _platforms_in(doc):
    match = _PLATFORMS.search(doc or "")
    return frozenset(p.strip("`") for p in match.group(1).split()) if match else None


def _api_platforms(path):
    """The "Supported Platforms" of the public API ``mindspore.ops.name`` (or ``mindspore.ops.Primitive``), else of
    ``mindspore.ops.auto_generate.name``; None when neither documents any."""
    name = path.rsplit(".", 1)[-1]
    for module_name in ("mindspore.ops", "mindspore.ops.auto_generate"):
        found = _platforms_in(getattr(getattr(importlib.import_module(module_name), name, None), "__doc__", ""))
        if found:
            return found
    return None


def documented_platforms(op):
    """(platforms, where) from MindSpore's documentation of primitive ``op``: its docstring's "Supported
    Platforms", else that of the function it refers to; (None, where) when neither names any."""
    for module_name in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, op, None)
        if cls is None:
            continue
        doc = cls.__doc__ or ""
        found = _platforms_in(doc)
        if found:
            return found, f"{module_name}.{op}"
        refer = _REFERS.search(doc)
        if refer:
            found = _api_platforms(refer.group(1))
            if found:
                return found, refer.group(1)
        return None, f"{module_name}.{op}"
    return None, "not found"


def _accelerated(platforms):
    return platforms is not None and all(p in platforms for p in ACCELERATORS)


def verdict(op, platforms):
    """(verdict, error) of primitive ``op`` documented for ``platforms`` (None: no platforms documented).

    Verdicts: ``ok``; ``custom`` / ``cpu-only`` (errors); for an operator of ``REVIEWED``, ``via <API>`` or
    ``gradient of <API>`` (an error when that API is not documented for both accelerators) or ``internal``;
    otherwise ``partly documented`` / ``undocumented`` (errors until reviewed)."""
    if op == "Custom" or op.startswith("Custom"):
        return "custom", True
    if _accelerated(platforms):
        return "ok", False
    if platforms is not None and not any(p in platforms for p in ACCELERATORS):
        return "cpu-only", True
    if op in REVIEWED:
        kind, api = REVIEWED[op]
        if kind == "internal":
            return "internal", False
        api_ok = _accelerated(_api_platforms(api))
        label = f"via {api}" if kind == "emitted" else f"gradient of {api}"
        return label + ("" if api_ok else " (API not documented for Ascend and GPU)"), not api_ok
    return ("partly documented" if platforms is not None else "undocumented"), True


def check(counter, where=None):
    """Rows {op, count, platforms, source, verdict, error, where} for a Counter of primitives; ``where``: op ->
    the project source line that produced its first node."""
    rows = []
    for op, count in sorted(counter.items()):
        platforms, source = documented_platforms(op)
        status, error = verdict(op, platforms)
        rows.append({"op": op, "count": count, "platforms": sorted(platforms) if platforms else None,
                     "source": source, "verdict": status, "error": error, "where": (where or {}).get(op, "")})
    return rows


def compile_graph(cell, inputs, ir_dir=None):
    """Compile ``cell`` for ``inputs`` (nothing runs); with ``ir_dir``, its IR files go there. Returns the
    compile seconds and, with ``ir_dir``, ``graph_primitives`` of its validate-stage graph (else None)."""
    previous = os.environ.get("MS_DEV_DUMP_IR_PASSES")
    if ir_dir:
        os.environ["MS_DEV_DUMP_IR_PASSES"] = "validate"  # only the stage read here (a third of the compile time)
        ms.set_context(save_graphs=1, save_graphs_path=str(ir_dir))
    start = time.perf_counter()
    try:
        cell.compile(*inputs)
    finally:
        if ir_dir:
            ms.set_context(save_graphs=0)
            if previous is None:
                os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
            else:
                os.environ["MS_DEV_DUMP_IR_PASSES"] = previous
    seconds = time.perf_counter() - start
    if not ir_dir:
        return seconds, None
    files = sorted(Path(ir_dir).rglob("*_validate_*.ir"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"MindSpore wrote no validate-stage IR into {ir_dir}")
    return seconds, graph_primitives(files[-1].read_text(encoding="utf-8", errors="replace"))


# ------------------------------------------------------------------------------------------- one model
def newton_steps_loop(inv, mat, iters):
    """The Newton steps of ``models.softmax_free_transformer.newton_steps`` as a graph-mode while loop (a tensor
    counter, so that graph mode keeps the loop instead of unrolling it)."""
    step = ms.Tensor(0, ms.int32)
    while step < iters:
        inv = 2.0 * inv - ops.matmul(ops.matmul(inv, mat), inv)
        step = step + 1
    return inv


def _config(name, image_size, batch):
    from src.model_utils.config import make_config

    path = REPO / "config" / f"{name.lower()}.yml"
    overrides = {"device_target": "CPU", "dataset_path": "", "train_image_size": image_size,
                 "eval_image_size": image_size, "batch_size": batch, "eval_batch_size": batch,
                 "run_distribute": 0}
    return make_config(overrides, config_path=str(path) if path.is_file() else None)


def _train_step(config):
    import numpy as np

    from src.builder import build_network
    from src.lr_generator import lr_from_config
    from src.train_step import build_train_step

    net, _ = build_network(config, "train")
    step = build_train_step(config, net, learning_rate=lr_from_config(config, 10))
    batch, size, classes = int(config.batch_size), int(config.train_image_size), int(config.class_num)
    return step, (ms.Tensor(np.zeros((batch, 3, size, size), np.float32)),
                  ms.Tensor(np.full((batch, classes), 1.0 / classes, np.float32)))


def _eval_net(config):
    import numpy as np

    from src.builder import build_network

    net, _ = build_network(config, "eval", random_weights=True)
    size = int(config.eval_image_size)
    return net, (ms.Tensor(np.zeros((int(config.eval_batch_size), 3, size, size), np.float32)),)


def worker(name, what, image_size, batch, dump_ir):
    """One compile in this process: ``what`` is train, eval or train-loop (SOFT's Newton steps as a loop)."""
    os.environ["SOFT_CPU_KERNELS"] = "0"

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if what == "train-loop":
        import models.softmax_free_transformer as soft
        soft.newton_steps = newton_steps_loop
    from models import is_accelerated

    config = _config(name, image_size, batch)
    cell, inputs = _eval_net(config) if what == "eval" else _train_step(config)
    if is_accelerated(cell.network if hasattr(cell, "network") else cell):
        raise RuntimeError("the CPU speed layer is on: this check needs the portable network")
    with tempfile.TemporaryDirectory(prefix="accel_ir_") as tmp:
        seconds, counter = compile_graph(cell, inputs, tmp if dump_ir else None)
    return {"model": name, "what": what, "compile_s": round(seconds, 2),
            "primitives": dict(counter[0]) if counter is not None else None,
            "where": counter[1] if counter is not None else None}


_LOOP_EQUALITY = r'''
import os, sys
os.environ["SOFT_CPU_KERNELS"] = "0"
sys.path.insert(0, sys.argv[1])
import json
import numpy as np
import mindspore as ms
ms.set_context(mode=ms.GRAPH_MODE)
import models.softmax_free_transformer as soft
from models import create_model
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
from accelerator_check import newton_steps_loop
name = sys.argv[2]
x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
ms.set_seed(0)
unrolled = create_model(name, depths=(1, 1, 1, 1))
unrolled.set_train(False)
want = unrolled(x).asnumpy()
soft.newton_steps = newton_steps_loop
looped = create_model(name, depths=(1, 1, 1, 1))
ms.load_param_into_net(looped, {p.name: p for p in unrolled.get_parameters()})
looped.set_train(False)
got = looped(x).asnumpy()
print(json.dumps({"max_abs_diff": float(np.abs(got - want).max()), "max_abs": float(np.abs(want).max())}))
'''


def _run_worker(name, what, args, dump_ir):
    cmd = [sys.executable, __file__, "--worker", name, "--what", what, "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size)] + (["--dump-ir"] if dump_ir else [])
    with tempfile.TemporaryDirectory(prefix="accel_") as scratch:
        env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"), PYTHONPATH=str(REPO))
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=args.timeout,
                              check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"model": name, "what": what, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def _loop_equality(name, timeout):
    with tempfile.TemporaryDirectory(prefix="accel_") as scratch:
        script = Path(scratch) / "loop_equality.py"
        script.write_text(_LOOP_EQUALITY)
        proc = subprocess.run([sys.executable, str(script), str(REPO), name], cwd=scratch, capture_output=True,
                              text=True, timeout=timeout, check=False, env=dict(os.environ, GLOG_v="3"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-1:]}


def check_model(name, args):
    """Every measurement of one model (each compile in a fresh process)."""
    result = {"model": name}
    for what in ("train", "eval"):
        listed = _run_worker(name, what, args, dump_ir=True)
        if "error" in listed:
            result[what] = listed
            continue
        rows = check(collections.Counter(listed["primitives"]), listed["where"])
        result[what] = {"operators": sum(listed["primitives"].values()), "rows": rows,
                        "errors": [r["op"] for r in rows if r["error"]]}
    timed = _run_worker(name, "train", args, dump_ir=False)
    result["train_compile_s"] = timed.get("compile_s")
    if args.newton_loop and name.startswith("soft"):
        loop = _run_worker(name, "train-loop", args, dump_ir=True)
        timed_loop = _run_worker(name, "train-loop", args, dump_ir=False)
        result["train_loop"] = {"operators": sum(loop["primitives"].values()) if "primitives" in loop else None,
                                "compile_s": timed_loop.get("compile_s"), "equality": _loop_equality(name, args.timeout),
                                "error": loop.get("error") or timed_loop.get("error")}
    return result


def _print_report(results):
    print("| model | train graph operators | train compile (s) | eval graph operators | verdict |")
    print("|---|---:|---:|---:|---|")
    for res in results:
        train, evaluation = res.get("train", {}), res.get("eval", {})
        errors = sorted(set(train.get("errors", [])) | set(evaluation.get("errors", [])))
        broken = [w for w in ("train", "eval") if "error" in res.get(w, {})]
        status = ("FAILED to compile " + ", ".join(broken)) if broken else \
            ("errors: " + ", ".join(errors) if errors else "ok")
        print(f"| {res['model']} | {train.get('operators', '-')} | {res.get('train_compile_s', '-')} | "
              f"{evaluation.get('operators', '-')} | {status} |")
    named = {}
    for res in results:
        for what in ("train", "eval"):
            for row in res.get(what, {}).get("rows", []):
                if row["verdict"] != "ok":
                    named.setdefault(row["op"], row)
    if named:
        print("\nOperators whose own docstring does not name both Ascend and GPU:\n")
        print("| operator | its documented platforms | verdict | first made by |")
        print("|---|---|---|---|")
        for op, row in sorted(named.items()):
            platforms = ", ".join(row["platforms"]) if row["platforms"] else "none"
            print(f"| {op} | {platforms} | {row['verdict']}{' (ERROR)' if row['error'] else ''} | {row['where']} |")
    loops = [res for res in results if "train_loop" in res]
    if loops:
        print("\nNewton steps unrolled (the model) against a graph-mode while loop (train graph):\n")
        print("| model | operators unrolled | operators loop | compile unrolled (s) | compile loop (s) | "
              "max abs logit difference |")
        print("|---|---:|---:|---:|---:|---:|")
        for res in loops:
            loop = res["train_loop"]
            equality = loop.get("equality", {})
            diff = f"{equality['max_abs_diff']:.3g} (of {equality['max_abs']:.3g})" if "max_abs_diff" in equality \
                else str(equality.get("error"))
            print(f"| {res['model']} | {res['train'].get('operators', '-')} | {loop.get('operators')} | "
                  f"{res.get('train_compile_s')} | {loop.get('compile_s')} | {diff} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registered model names")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--newton-loop", action="store_true", help="also compile SOFT's Newton steps as a loop")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds for one compile (one process)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--what", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--dump-ir", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.what, args.image_size, args.batch_size, args.dump_ir)))
        return 0
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        print(f"{name}: compiling (train, eval{', loop' if args.newton_loop else ''})...", file=sys.stderr, flush=True)
        results.append(check_model(name, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results}, indent=1))
    _print_report(results)
    failed = any(res.get(w, {}).get("errors") or "error" in res.get(w, {}) for res in results for w in ("train", "eval"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
