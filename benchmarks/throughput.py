#!/usr/bin/env python3
"""Inference and training throughput of registered models (graph mode), one fresh process per run.

    python benchmarks/throughput.py --model soft_tiny --model SwiftFormer_XS \\
        --image-size 224 --batch-size 8 --iters 10 --warmup 2 --mode both --json OUT.json

For every model and every mode (``infer``, ``train``) the script starts itself again as a worker
(``--worker``) in a fresh Python process, so that compile caches and peak memory of one model do not
leak into the next. A worker builds the model, times the first call (graph compilation plus the first
run), runs ``--warmup`` untimed calls and ``--iters`` timed calls (each synchronised with
``.asnumpy()``), and reports the median. Peak memory is the worker's peak resident set size
(``resource.getrusage(...).ru_maxrss``) and its growth over the RSS right after importing MindSpore
and the model zoo.

A model is given as ``NAME`` (a name from ``models.list_models(include_benchmark=True)``) or
``NAME:pool`` / ``NAME:pool=G`` (SOFT with a fixed G x G landmark grid, ``landmarks="pool"``).

Progress goes to stderr; a table goes to stdout; all numbers go to ``--json``.
"""
import os
import argparse
import collections
import datetime
import json
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

THIS_FILE = Path(__file__).resolve()
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULT_TAG = "@@BENCH_RESULT@@ "
MODES = ("infer", "train")
AMP_LEVELS = ("O0", "O1", "O2", "O3")
FAILED = ("error", "oom", "timeout", "skipped")


# ----------------------------------------------------------------------------------------------------
# helpers shared with scaling.py

def parse_model_spec(spec):
    """``"NAME"``, ``"NAME:pool"`` or ``"NAME:pool=G"`` -> ``(NAME, create_model overrides)``."""
    name, _, option = spec.partition(":")
    if not name:
        raise ValueError(f"bad model spec {spec!r}: empty model name")
    if not option:
        return name, {}
    key, eq, value = option.partition("=")
    if key != "pool":
        raise ValueError(f"bad model spec {spec!r}: the only option is ':pool' or ':pool=G' (fixed landmark grid)")
    overrides = {"landmarks": "pool"}
    if eq:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"bad model spec {spec!r}: the landmark grid G in ':pool=G' must be a positive integer")
        overrides["landmark_grid"] = int(value)
    return name, overrides


def check_image_size(size):
    """argparse type: a positive multiple of 32 (what every backbone accepts)."""
    value = int(size)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"image size must be a positive multiple of 32, got {size}")
    return value


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def model_spec(text):
    """argparse type for a model spec (checks the syntax only; the worker checks the name)."""
    try:
        parse_model_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def maxrss_mb():
    """This process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _meminfo_mb(field):
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _process_rss_mb(pid):
    """Current RSS of ``pid`` in MiB from /proc (None where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_memory_limit_mb():
    """80% of the memory available now (the watchdog kills a worker that grows past it), or 0 (off)."""
    available = _meminfo_mb("MemAvailable")
    return int(available * 0.8) if available else 0


def host_info():
    """Machine facts that do not need MindSpore."""
    cpu_model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    total = _meminfo_mb("MemTotal")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_count_usable": usable,
        "cpu_model": cpu_model,
        "memory_total_mb": round(total) if total else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def log(message):
    print(message, file=sys.stderr, flush=True)


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def run_worker(spec, mode, image_size, batch_size, iters, warmup, *, amp_level="O0", num_classes=1000,
               device_target=None, seed=0, timeout=None, max_memory_mb=0):
    """Run one (model, mode) measurement in a fresh process; return its result record.

    The record always has ``status``: ``ok``, ``error`` (an exception, see ``error``), ``oom`` (out of
    memory: a memory error inside the worker, the watchdog's ``max_memory_mb`` reached, or the worker
    killed by SIGKILL, which is what the kernel's OOM killer sends) or ``timeout`` (``timeout`` seconds
    passed, compile included). The worker's progress lines are passed through to stderr.
    """
    cmd = [sys.executable, str(THIS_FILE), "--worker", "--model", spec, "--mode", mode,
           "--image-size", str(image_size), "--batch-size", str(batch_size), "--iters", str(iters),
           "--warmup", str(warmup), "--amp-level", amp_level, "--num-classes", str(num_classes),
           "--seed", str(seed)]
    if device_target:
        cmd += ["--device-target", device_target]
    env = dict(os.environ)
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only, keep the progress readable
    env["PYTHONUNBUFFERED"] = "1"
    base = {"model": spec, "mode": mode, "image_size": image_size, "batch": batch_size}

    tail = collections.deque(maxlen=40)
    results = []

    def pump_stdout(stream):
        for line in stream:
            if line.startswith(RESULT_TAG):
                try:
                    results.append(json.loads(line[len(RESULT_TAG):]))
                    continue
                except ValueError:
                    pass
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
            sys.stderr.flush()

    def pump_stderr(stream):
        for line in stream:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
            sys.stderr.flush()

    scratch = tempfile.mkdtemp(prefix="soft_bench_")  # MindSpore writes rank_0/ etc. into its cwd
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1, start_new_session=True)
    readers = [threading.Thread(target=pump_stdout, args=(proc.stdout,), daemon=True),
               threading.Thread(target=pump_stderr, args=(proc.stderr,), daemon=True)]
    for reader in readers:
        reader.start()
    killed_for = None
    watched_peak = 0.0
    try:
        while proc.poll() is None:
            rss = _process_rss_mb(proc.pid)
            if rss is not None:
                watched_peak = max(watched_peak, rss)
                if max_memory_mb and rss > max_memory_mb:
                    killed_for = "oom"
            if timeout and time.monotonic() - start > timeout:
                killed_for = "timeout"
            if killed_for:
                _kill_group(proc)
                break
            time.sleep(0.1)
        proc.wait()
    except BaseException:  # Ctrl-C: do not leave the worker running
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - start

    if killed_for == "timeout":
        record = dict(base, status="timeout", error=f"no result within the {timeout:g} s timeout")
    elif killed_for == "oom":
        record = dict(base, status="oom", peak_rss_mb=round(watched_peak, 1),
                      error=f"resident memory passed the {max_memory_mb} MiB limit (--max-memory-mb); worker killed")
    elif results:
        record = results[-1]
    elif proc.returncode == -signal.SIGKILL:
        record = dict(base, status="oom", peak_rss_mb=round(watched_peak, 1) or None,
                      error="worker killed by SIGKILL (most likely the kernel's out-of-memory killer)")
    else:
        record = dict(base, status="error",
                      error=f"worker exited with code {proc.returncode} without a result; last output:\n"
                            + "\n".join(tail))
    record["wall_s"] = round(wall, 2)
    return record


def _kill_group(proc):
    """SIGKILL the worker we started (it leads its own process group) and anything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def format_table(headers, rows):
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value, digits=1):
    return None if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------------
# worker: one (model, mode) in this process

_OOM_MARKERS = ("out of memory", "outofmemory", "memory not enough", "malloc", "alloc memory", "allocate memory",
                "bad_alloc", "cannot allocate")


def _looks_like_oom(exc):
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _OOM_MARKERS)


def worker_main(args):
    spec, mode = args.model[0], args.mode
    label = spec
    record = {"model": spec, "mode": mode, "image_size": args.image_size, "batch": args.batch_size,
              "iters": args.iters, "warmup": args.warmup, "amp_level": args.amp_level, "status": "ok"}
    phase = "import"
    baseline = None

    def progress(message):
        log(f"{label}: {message}")

    try:
        name, overrides = parse_model_spec(spec)
        record.update(name=name, overrides=overrides)
        import numpy as np
        import mindspore as ms
        from src.builder import build_network
        from src.model_utils.config import make_config
        from src.train_step import build_train_step
        record["mindspore_version"] = ms.__version__
        baseline = maxrss_mb()

        ms.set_context(mode=ms.GRAPH_MODE)
        if args.device_target:
            if hasattr(ms, "set_device"):
                ms.set_device(args.device_target)
            else:
                ms.set_context(device_target=args.device_target)
        record["device"] = ms.get_context("device_target")
        ms.set_seed(args.seed)

        phase = "build"
        # what train.py / eval.py run: the builder, the inference pass, the recipe's train step
        config = make_config({"backbone": name, "class_num": args.num_classes, "model_args": overrides,
                              "amp_level": args.amp_level, "clip_grad": 1.0, "model_ema": False,
                              "loss_scale": 1024.0 if args.amp_level != "O0" else 1.0})
        net, _ = build_network(config, "infer" if mode == "infer" else "train", random_weights=True)
        record["params"] = int(sum(int(np.prod(p.shape)) for p in net.trainable_params()))
        rng = np.random.default_rng(args.seed)
        images = ms.Tensor(rng.standard_normal((args.batch_size, 3, args.image_size, args.image_size))
                           .astype(np.float32))
        if mode == "infer":
            def call():
                return net(images).asnumpy()
        else:
            targets = np.eye(args.num_classes, dtype=np.float32)[rng.integers(0, args.num_classes, args.batch_size)]
            labels = ms.Tensor(targets)
            step = build_train_step(config, net)

            def call():
                return step(images, labels)[0].asnumpy()

        phase = "compile"
        size = f"{args.image_size}x{args.image_size}"
        progress(f"compiling ({mode}, {size}, batch {args.batch_size})...")
        start = time.perf_counter()
        call()
        record["compile_s"] = round(time.perf_counter() - start, 3)
        progress(f"compiled + first {mode} call in {record['compile_s']:.1f} s")

        phase = "warmup"
        for i in range(args.warmup):
            start = time.perf_counter()
            call()
            progress(f"warmup {i + 1}/{args.warmup} {(time.perf_counter() - start) * 1e3:.1f} ms")

        phase = "run"
        samples = []
        for i in range(args.iters):
            start = time.perf_counter()
            out = call()
            samples.append((time.perf_counter() - start) * 1e3)
            progress(f"{mode} {i + 1}/{args.iters} {samples[-1]:.1f} ms")
        if not np.isfinite(out).all():
            record["warning"] = "non-finite output"
        median = statistics.median(samples)
        record.update(ms_median=round(median, 3), ms_mean=round(statistics.fmean(samples), 3),
                      ms_min=round(min(samples), 3), ms_max=round(max(samples), 3),
                      ms_samples=[round(s, 3) for s in samples],
                      img_s=round(args.batch_size * 1e3 / median, 3))
    except Exception as exc:  # noqa: BLE001  -- every failure becomes a record
        record["status"] = "oom" if _looks_like_oom(exc) else "error"
        record["phase"] = phase
        record["error"] = f"{type(exc).__name__}: {exc}"[:4000]
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        progress(f"{record['status']} during {phase}: {type(exc).__name__}: {first_line}")
    finally:
        peak = maxrss_mb()
        record["peak_rss_mb"] = round(peak, 1)
        if baseline is not None:
            record["rss_baseline_mb"] = round(baseline, 1)
            record["rss_growth_mb"] = round(peak - baseline, 1)
        print(RESULT_TAG + json.dumps(record), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------
# driver

def merge(spec, runs, host):
    """One flat row per model from its per-mode worker records."""
    row = {"model": spec}
    first = next(iter(runs.values()))
    row.update(image_size=first.get("image_size"), batch=first.get("batch"))
    for rec in runs.values():
        for key in ("params", "device", "mindspore_version", "amp_level"):
            if rec.get(key) is not None and key not in row:
                row[key] = rec[key]
    infer, train = runs.get("infer"), runs.get("train")
    if infer:
        row.update(infer_status=infer["status"], infer_compile_s=infer.get("compile_s"),
                   infer_ms_per_batch=infer.get("ms_median"), infer_ms_mean=infer.get("ms_mean"),
                   infer_ms_min=infer.get("ms_min"), infer_ms_max=infer.get("ms_max"),
                   infer_ms_samples=infer.get("ms_samples"), infer_img_s=infer.get("img_s"),
                   infer_peak_rss_mb=infer.get("peak_rss_mb"), infer_rss_growth_mb=infer.get("rss_growth_mb"))
        if infer.get("error"):
            row["infer_error"] = infer["error"]
    if train:
        row.update(train_status=train["status"], train_compile_s=train.get("compile_s"),
                   train_ms_per_step=train.get("ms_median"), train_ms_mean=train.get("ms_mean"),
                   train_ms_min=train.get("ms_min"), train_ms_max=train.get("ms_max"),
                   train_ms_samples=train.get("ms_samples"), train_img_s=train.get("img_s"),
                   train_peak_rss_mb=train.get("peak_rss_mb"), train_rss_growth_mb=train.get("rss_growth_mb"))
        if train.get("error"):
            row["train_error"] = train["error"]
    row["compile_s"] = (infer or {}).get("compile_s") or (train or {}).get("compile_s")
    peaks = [r.get("peak_rss_mb") for r in runs.values() if r.get("peak_rss_mb") is not None]
    row["peak_rss_mb"] = max(peaks) if peaks else None
    baselines = [r.get("rss_baseline_mb") for r in runs.values() if r.get("rss_baseline_mb") is not None]
    row["rss_baseline_mb"] = min(baselines) if baselines else None
    growths = [r.get("rss_growth_mb") for r in runs.values() if r.get("rss_growth_mb") is not None]
    row["rss_growth_mb"] = max(growths) if growths else None
    statuses = [r["status"] for r in runs.values()]
    row["status"] = "ok" if all(s == "ok" for s in statuses) else next(s for s in statuses if s != "ok")
    row.setdefault("device", None)
    row.update(cpu_count=host["cpu_count"], date=host["date"])
    return row


def table(rows):
    headers = ["model", "size", "batch", "params(M)", "compile s", "infer ms/batch", "infer img/s",
               "train compile s", "train ms/step", "train img/s", "peak RSS MB", "status"]
    body = []
    for r in rows:
        params = r.get("params")
        body.append([r["model"], r.get("image_size"), r.get("batch"),
                     None if params is None else f"{params / 1e6:.2f}",
                     fmt(r.get("infer_compile_s")), fmt(r.get("infer_ms_per_batch")), fmt(r.get("infer_img_s"), 2),
                     fmt(r.get("train_compile_s")), fmt(r.get("train_ms_per_step")), fmt(r.get("train_img_s"), 2),
                     fmt(r.get("peak_rss_mb"), 0), r.get("status")])
    return format_table(headers, body)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Model specs: NAME, NAME:pool (fixed 7x7 landmark grid), NAME:pool=G.")
    parser.add_argument("--model", action="append", type=model_spec, metavar="SPEC",
                        help="model to measure (repeatable; default soft_tiny)")
    parser.add_argument("--image-size", type=check_image_size, default=224, help="square input side (default 224)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="batch size (default 8)")
    parser.add_argument("--iters", type=positive_int, default=10, help="timed calls per mode (default 10)")
    parser.add_argument("--warmup", type=non_negative_int, default=2,
                        help="untimed calls after the compiling first call (default 2)")
    parser.add_argument("--mode", choices=("infer", "train", "both"), default="both",
                        help="what to time (default both)")
    parser.add_argument("--amp-level", choices=AMP_LEVELS, default="O0", help="MindSpore AMP level (default O0)")
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="classifier size (default 1000)")
    parser.add_argument("--device-target", choices=("CPU", "GPU", "Ascend"), default=None,
                        help="MindSpore device (default: MindSpore's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and labels")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds one (model, mode) worker may take, compile included (default 3600)")
    parser.add_argument("--max-memory-mb", type=int, default=None,
                        help="kill a worker whose RSS passes this (MiB; default 80%% of the memory available at "
                             "start, 0 = no limit); recorded as status 'oom'")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "throughput.json",
                        help="output JSON (default benchmarks/results/throughput.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.model = args.model or ["soft_tiny"]
    if args.worker:
        if len(args.model) != 1 or args.mode == "both":
            raise SystemExit("--worker takes exactly one --model and --mode infer or train")
        return worker_main(args)

    modes = MODES if args.mode == "both" else (args.mode,)
    memory_limit = default_memory_limit_mb() if args.max_memory_mb is None else args.max_memory_mb
    host = host_info()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"}
    config["max_memory_mb"] = memory_limit
    payload = {"benchmark": "throughput", "meta": dict(host), "config": config, "results": []}
    log(f"throughput: {len(args.model)} model(s), modes {', '.join(modes)}, {args.image_size}x{args.image_size}, "
        f"batch {args.batch_size}, {args.warmup} warmup + {args.iters} timed calls; JSON -> {args.json}")

    for spec in args.model:
        runs = {}
        for mode in modes:
            log(f"{spec}: {mode}: starting a fresh worker process")
            rec = run_worker(spec, mode, args.image_size, args.batch_size, args.iters, args.warmup,
                             amp_level=args.amp_level, num_classes=args.num_classes,
                             device_target=args.device_target, seed=args.seed, timeout=args.timeout,
                             max_memory_mb=memory_limit)
            runs[mode] = rec
            if rec["status"] == "ok":
                log(f"{spec}: {mode} done: {rec['ms_median']:.1f} ms median, {rec['img_s']:.2f} img/s, "
                    f"peak RSS {rec['peak_rss_mb']:.0f} MB")
            else:
                log(f"{spec}: {mode} {rec['status']}: {rec.get('error', '')[:500]}")
                if rec.get("phase") in ("import", "build"):  # the other mode would fail the same way
                    for other in modes:
                        if other not in runs:
                            runs[other] = dict(rec, mode=other)
                    break
        row = merge(spec, runs, host)
        for key in ("device", "mindspore_version"):
            if row.get(key) and not payload["meta"].get(key):
                payload["meta"][key] = row[key]
        payload["results"].append(row)
        write_json(args.json, payload)  # after every model, so an interrupted run keeps what it measured

    print(table(payload["results"]))
    meta = payload["meta"]
    print(f"\n{meta.get('device') or '?'} | MindSpore {meta.get('mindspore_version') or '?'} | "
          f"{meta['cpu_count']} CPUs ({meta['cpu_model']}) | {meta['date']} | amp {args.amp_level} | "
          f"median of {args.iters} after {args.warmup} warmup")
    print(f"JSON written to {args.json}")
    return 0 if all(r["status"] == "ok" for r in payload["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
