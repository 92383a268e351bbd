#!/usr/bin/env python3
"""How forward time and peak memory grow with the input size (linear vs quadratic attention).

    python benchmarks/scaling.py --sizes 224 448 672 896 \\
        --models soft_tiny bench_soft_tiny_softmax soft_tiny:pool \\
        --batch-size 1 --iters 3 --timeout 600

For every model and input size (smallest first) a fresh worker process (``throughput.py --worker
--mode infer``) builds the model, compiles it (the first call, not timed), runs ``--warmup``
untimed and ``--iters`` timed forwards and reports the median time and its peak RSS. A run that
runs out of memory (or passes ``--max-memory-mb``) or takes longer than ``--timeout`` seconds is
recorded with that status, and the larger sizes of that model are skipped.

Model specs: ``NAME`` (the registry's default: conv landmarks for SOFT, m = N / r² landmarks),
``NAME:pool`` (fixed 7x7 landmark grid: linear cost), ``NAME:pool=G`` (fixed G x G grid).
``bench_soft_tiny_softmax`` is soft_tiny with softmax attention in stages 1-3 (quadratic).

Writes ``--json`` and a log-log ``--plot`` (time and peak memory against the number of stage-1 tokens
(H/4)(W/4), with dashed linear and dotted quadratic reference slopes) and prints a table with
ratios to the reference size (224, or the smallest size when 224 is not measured).
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.throughput import (AMP_LEVELS, RESULTS_DIR, check_image_size, default_memory_limit_mb,
                                   fmt, format_table, host_info, log, model_spec, non_negative_int,
                                   positive_int, run_worker, write_json)

DEFAULT_SIZES = (224, 448, 672, 896)
DEFAULT_MODELS = ("soft_tiny", "bench_soft_tiny_softmax", "soft_tiny:pool")
STOPPING = ("oom", "timeout", "error")


def tokens(size):
    """Stage-1 tokens of a size x size input: (H/4)(W/4)."""
    return (size // 4) * (size // 4)


def measure(args, memory_limit, on_record=None):
    """Run every (model, size); return the records in model order, sizes ascending."""
    records = []
    sizes = sorted(set(args.sizes))
    for spec in args.models:
        stopped = None
        for size in sizes:
            base = {"model": spec, "image_size": size, "tokens": tokens(size), "batch": args.batch_size}
            if stopped:
                rec = dict(base, status="skipped", error=f"skipped: {stopped}")
                log(f"{spec}: {size}x{size} skipped ({stopped})")
            else:
                log(f"{spec}: {size}x{size} ({tokens(size)} stage-1 tokens): starting a fresh worker process")
                worker = run_worker(spec, "infer", size, args.batch_size, args.iters, args.warmup,
                                    amp_level=args.amp_level, num_classes=args.num_classes,
                                    device_target=args.device_target, seed=args.seed, timeout=args.timeout,
                                    max_memory_mb=memory_limit)
                rec = dict(base, status=worker["status"])
                for key in ("params", "device", "mindspore_version", "compile_s", "ms_median", "ms_mean", "ms_min",
                            "ms_max", "ms_samples", "img_s", "peak_rss_mb", "rss_baseline_mb", "rss_growth_mb",
                            "wall_s", "phase", "error"):
                    if worker.get(key) is not None:
                        rec[key] = worker[key]
                rec["time_s"] = None if rec.get("ms_median") is None else round(rec["ms_median"] / 1e3, 6)
                if rec["status"] == "ok":
                    log(f"{spec}: {size}x{size}: {rec['ms_median']:.1f} ms, "
                        f"peak RSS {rec.get('peak_rss_mb', 0):.0f} MB")
                else:
                    log(f"{spec}: {size}x{size}: {rec['status']}: {(rec.get('error') or '')[:300]}")
                    if rec["status"] in STOPPING:
                        stopped = f"{rec['status']} at {size}"
            records.append(rec)
            if on_record:
                on_record(records)
    return records


def reference_size(sizes):
    return 224 if 224 in sizes else min(sizes)


def add_ratios(records):
    """time / memory ratios to the same model's reference-size run (224 or the smallest size)."""
    ref = reference_size([r["image_size"] for r in records])
    by_model = {r["model"]: r for r in records if r["image_size"] == ref and r["status"] == "ok"}
    for r in records:
        base = by_model.get(r["model"])
        r["reference_size"] = ref
        r["tokens_ratio"] = round(r["tokens"] / tokens(ref), 4)
        ok = base is not None and r["status"] == "ok"
        r["time_ratio"] = round(r["ms_median"] / base["ms_median"], 4) if ok else None
        r["peak_rss_ratio"] = (round(r["peak_rss_mb"] / base["peak_rss_mb"], 4)
                               if ok and r.get("peak_rss_mb") and base.get("peak_rss_mb") else None)
    return records


def table(records):
    ref = reference_size([r["image_size"] for r in records])
    headers = ["model", "size", "tokens", f"tokens/{ref}", "status", "forward ms", f"time/{ref}",
               "peak RSS MB", "RSS growth MB", f"RSS/{ref}"]
    rows = []
    for r in records:
        rows.append([r["model"], r["image_size"], r["tokens"], fmt(r["tokens_ratio"], 1), r["status"],
                     fmt(r.get("ms_median")), fmt(r.get("time_ratio"), 2), fmt(r.get("peak_rss_mb"), 0),
                     fmt(r.get("rss_growth_mb"), 0), fmt(r.get("peak_rss_ratio"), 2)])
    return format_table(headers, rows)


def plot(records, path, title, memory_metric="peak"):
    """Two log-log panels (forward time, peak memory against stage-1 tokens); returns False without matplotlib.

    ``memory_metric``: ``peak`` (the worker's peak RSS) or ``growth`` (peak RSS minus the RSS after
    importing MindSpore and the models, i.e. without the interpreter's fixed cost)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator
    except ImportError:
        log("scaling: matplotlib is not installed (pip install -r requirements-bench.txt): no plot written")
        return False

    models = list(dict.fromkeys(r["model"] for r in records))
    all_tokens = sorted({r["tokens"] for r in records})
    sizes = {r["tokens"]: r["image_size"] for r in records}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    memory = (("rss_growth_mb", "peak RSS growth over the RSS after import (MB)") if memory_metric == "growth"
              else ("peak_rss_mb", "peak RSS of the process (MB)"))
    panels = ((axes[0], "time_s", "forward time (s, median)"), (axes[1], *memory))
    for ax, key, ylabel in panels:
        anchors, values = [], []
        for model in models:
            ok = [r for r in records if r["model"] == model and r["status"] == "ok" and r.get(key)]
            failed = next((r for r in records if r["model"] == model and r["status"] in STOPPING), None)
            label = model if failed is None else f"{model} ({failed['status']} at {failed['image_size']})"
            if not ok:
                ax.plot([], [], marker="x", linestyle="none", label=label)
                continue
            xs, ys = [r["tokens"] for r in ok], [r[key] for r in ok]
            ax.plot(xs, ys, marker="o", label=label)
            anchors.append((xs[0], ys[0]))
            values += ys
        if anchors:
            ax.set_ylim(min(values) / 1.6, max(values) * 1.6)  # the reference slopes are clipped to the data
            x0, y0 = min(anchors, key=lambda a: (a[0], a[1]))
            span = [t for t in all_tokens if t >= x0]
            if len(span) > 1:
                ax.plot(span, [y0 * t / x0 for t in span], color="gray", linestyle="--", linewidth=1,
                        label="∝ tokens (linear)")
                ax.plot(span, [y0 * (t / x0) ** 2 for t in span], color="gray", linestyle=":", linewidth=1,
                        label="∝ tokens² (quadratic)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        short = high / low < 20  # under ~1.3 decades: label the minor ticks too
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}") if short else NullFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(all_tokens)
        ax.set_xticklabels([f"{t}\n({sizes[t]}²)" for t in all_tokens], fontsize=8)
        ax.set_xlabel("stage-1 tokens (H/4)·(W/4)  (input size)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Model specs: NAME, NAME:pool (fixed 7x7 landmark grid), NAME:pool=G.")
    parser.add_argument("--sizes", type=check_image_size, nargs="+", default=list(DEFAULT_SIZES),
                        help="square input sides, multiples of 32 (default 224 448 672 896)")
    parser.add_argument("--models", type=model_spec, nargs="+", default=list(DEFAULT_MODELS), metavar="SPEC",
                        help="model specs (default soft_tiny bench_soft_tiny_softmax soft_tiny:pool)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--iters", type=positive_int, default=3, help="timed forwards per run (default 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=0,
                        help="untimed forwards after the compiling first call (default 0)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one (model, size) run may take, compile included (default 600)")
    parser.add_argument("--max-memory-mb", type=int, default=None,
                        help="kill a run whose RSS passes this (MiB; default 80%% of the memory available at start, "
                             "0 = no limit); recorded as status 'oom'")
    parser.add_argument("--amp-level", choices=AMP_LEVELS, default="O0", help="MindSpore AMP level (default O0)")
    parser.add_argument("--num-classes", type=positive_int, default=1000, help="classifier size (default 1000)")
    parser.add_argument("--device-target", choices=("CPU", "GPU", "Ascend"), default=None,
                        help="MindSpore device (default: MindSpore's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "scaling.json",
                        help="output JSON (default benchmarks/results/scaling.json)")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "scaling.png",
                        help="output PNG (default benchmarks/results/scaling.png)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    parser.add_argument("--plot-memory", choices=("peak", "growth"), default="peak",
                        help="memory panel: the worker's peak RSS (default) or its growth over the RSS after import")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    memory_limit = default_memory_limit_mb() if args.max_memory_mb is None else args.max_memory_mb
    host = host_info()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["max_memory_mb"] = memory_limit
    payload = {"benchmark": "scaling", "meta": dict(host), "config": config, "results": []}
    log(f"scaling: models {' '.join(args.models)}; sizes {' '.join(map(str, sorted(set(args.sizes))))}; "
        f"batch {args.batch_size}; {args.warmup} warmup + {args.iters} timed forwards; timeout {args.timeout:g} s; "
        f"memory limit {memory_limit or 'none'} MiB; JSON -> {args.json}")

    def save(records):
        payload["results"] = add_ratios([dict(r) for r in records])
        for r in records:
            for key in ("device", "mindspore_version"):
                if r.get(key) and not payload["meta"].get(key):
                    payload["meta"][key] = r[key]
        write_json(args.json, payload)  # after every run: an interrupted sweep keeps what it measured

    records = measure(args, memory_limit, on_record=save)
    save(records)
    meta = payload["meta"]
    title = (f"SOFT scaling: forward, batch {args.batch_size}, median of {args.iters} | "
             f"{meta.get('device') or '?'}, MindSpore {meta.get('mindspore_version') or '?'}, "
             f"{meta['cpu_count']} CPUs | {meta['date'][:10]}")
    plotted = False if args.no_plot else plot(payload["results"], args.plot, title, args.plot_memory)
    payload["plot"] = str(args.plot) if plotted else None
    write_json(args.json, payload)

    print(table(payload["results"]))
    print(f"\n{title}")
    print(f"JSON written to {args.json}" + (f"; plot written to {args.plot}" if plotted else ""))
    return 1 if any(r["status"] == "error" for r in payload["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
