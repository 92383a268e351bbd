#!/usr/bin/env python3
"""First build and restart of the image cache (``src/image_manifest.py``) against the number of files, with
an extrapolation to ImageNet's 1,281,167 training images.

    python benchmarks/image_cache.py --sizes 20000 200000 --work /data/bench_cache \\
        --json benchmarks/results/image_cache.json

For every size N an ImageFolder of N distinct small JPEG files in ``--classes`` class folders is generated
under ``--work`` (kept and reused by later runs; ``--data FOLDER`` measures an existing ImageFolder as one
more point). Each measurement runs in a fresh Python process, as a training start does, and times
``load_manifest`` alone (the interpreter's start and imports are not counted):

* **first build** (``first_build_s``): no cache yet: every file checked by ``--workers`` worker processes
  (default: the usable cores); ``cpu_s`` is the CPU time of the process and its workers, ``cores_used`` =
  ``cpu_s / first_build_s`` (near the worker count when the build uses all its cores);
* **restart** (``restart_s``, the median of ``--restarts`` fresh processes): an unchanged folder, what every
  later run and rank pays; ``list_s`` of it is the listing alone (names, sizes, mtimes);
* **restart, one file changed** (``restart_changed_s``): one file's mtime moved, so one file is checked again;
* **pipeline** (``pipeline_s``, unless ``--no-pipeline``): ``mindspore.dataset.ImageFolderDataset`` over the
  cache's view of links up to ``get_dataset_size()``, the rest of a run's data setup.

The extrapolation fits ``t = c * N^k`` through the measured sizes (least squares in log-log; one size:
proportional) and gives each time at ``--extrapolate`` files, with ``k`` (1: linear). ``--drop-caches``
empties the page cache before every measurement (root only; recorded), so that the first build reads
from the disk as on a fresh dataset; without it the generated files are usually still in memory.

Progress (and the cache's own progress lines) go to stderr; a table to stdout; every number to ``--json``,
written after each size.
"""
import argparse
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.throughput import fmt, format_table, host_info, log, positive_int, write_json  # noqa: E402

THIS_FILE = Path(__file__).resolve()
IMAGENET_TRAIN_FILES = 1_281_167
RESULT_TAG = "@@IMAGE_CACHE@@ "


# ----------------------------------------------------------------------------------------------------
# generated folders
def _jpeg_bytes(size, seed):
    import numpy as np
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate_folder(root, files, classes, image_size):
    """``root/train/<class>/<name>.JPEG``: ``files`` distinct JPEGs (one encoded image, a comment segment with
    the file's index after its start marker) in ``classes`` folders named as ImageNet's. Reused when complete."""
    train = Path(root) / "train"
    marker = Path(root) / ".complete"
    if marker.is_file() and marker.read_text().strip() == f"{files} {classes} {image_size}":
        return train
    if train.exists():
        raise SystemExit(f"error: {train} exists but is not a complete generated folder of {files} files; "
                         "remove it or choose another --work")
    base = _jpeg_bytes(image_size, 0)
    per_class = [files // classes + (1 if c < files % classes else 0) for c in range(classes)]
    written, started = 0, time.perf_counter()
    for c, count in enumerate(per_class):
        folder = train / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(count):
            comment = f"file {written}".encode()
            data = base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]
            (folder / f"n{c:08d}_{i}.JPEG").write_bytes(data)
            written += 1
        if c % max(1, classes // 10) == 0:
            log(f"generating {train}: {written:,}/{files:,} files ({time.perf_counter() - started:.0f}s)")
    marker.write_text(f"{files} {classes} {image_size}\n")
    return train


def count_files(folder):
    from src.image_manifest import list_image_folder
    return len(list_image_folder(str(folder))[1])


# ----------------------------------------------------------------------------------------------------
# one measurement in a fresh process
def _cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def worker_main(args):
    """``--worker``: time ``load_manifest`` (and the listing, and the pipeline's view) once; print the result."""
    from src.image_manifest import list_image_folder, load_manifest
    from src.logging import library_console

    library_console()
    result = {}
    started = time.perf_counter()
    list_image_folder(args.folder)
    result["list_s"] = time.perf_counter() - started
    started, cpu = time.perf_counter(), _cpu_seconds()
    manifest = load_manifest(args.folder, cache_dir=args.cache, workers=args.workers)
    result["load_s"] = time.perf_counter() - started
    result["cpu_s"] = _cpu_seconds() - cpu
    result["usable"] = len(manifest.paths)
    result["problems"] = len(manifest.problems)
    if args.pipeline:
        import mindspore.dataset as ds
        started = time.perf_counter()
        size = ds.ImageFolderDataset(manifest.view, class_indexing=manifest.view_class_indexing,
                                     shuffle=False).get_dataset_size()
        result["pipeline_s"] = time.perf_counter() - started
        result["pipeline_samples"] = size
    print(RESULT_TAG + json.dumps(result), flush=True)


def drop_page_cache():
    """Empty the page cache (root only); True when it was done."""
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def measure_once(args, folder, cache, pipeline=False):
    if args.drop_caches and not drop_page_cache():
        raise SystemExit("error: --drop-caches needs root (writing /proc/sys/vm/drop_caches failed)")
    command = [sys.executable, str(THIS_FILE), "--worker", "--folder", str(folder), "--cache", str(cache),
               "--workers", str(args.workers)] + (["--pipeline"] if pipeline else [])
    env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"))
    proc = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"error: the measurement of {folder} failed (exit code {proc.returncode}); see above")
    return json.loads(lines[-1][len(RESULT_TAG):])


def measure_folder(args, folder, files, cache):
    """First build, restarts and a restart after one changed file of ``folder`` with a fresh ``cache``."""
    if Path(cache).exists():
        import shutil
        shutil.rmtree(cache)
    log(f"{folder} ({files:,} files): first build")
    first = measure_once(args, folder, cache)
    restarts = []
    for k in range(args.restarts):
        log(f"{folder}: restart {k + 1}/{args.restarts}")
        restarts.append(measure_once(args, folder, cache, pipeline=args.pipeline and k == 0))
    changed = next(Path(folder).glob("*/*"))
    info = changed.stat()
    os.utime(changed, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    log(f"{folder}: restart after {changed.name} changed")
    after_change = measure_once(args, folder, cache)
    restart_s = statistics.median(r["load_s"] for r in restarts)
    return {"files": files, "folder": str(folder), "usable": first["usable"], "problems": first["problems"],
            "workers": args.workers, "first_build_s": round(first["load_s"], 4), "cpu_s": round(first["cpu_s"], 4),
            "cores_used": round(first["cpu_s"] / first["load_s"], 2) if first["load_s"] > 0 else None,
            "files_per_s": round(files / first["load_s"], 1) if first["load_s"] > 0 else None,
            "restart_s": round(restart_s, 4), "restart_samples_s": [round(r["load_s"], 4) for r in restarts],
            "list_s": round(statistics.median(r["list_s"] for r in restarts), 4),
            "restart_changed_s": round(after_change["load_s"], 4),
            "pipeline_s": round(restarts[0]["pipeline_s"], 4) if "pipeline_s" in restarts[0] else None,
            "page_cache": "dropped" if args.drop_caches else "as left by the generation (usually warm)"}


# ----------------------------------------------------------------------------------------------------
# extrapolation
def extrapolate(results, key, target):
    """``{"value", "exponent", "method"}`` of ``key`` at ``target`` files from the measured points."""
    points = [(r["files"], r[key]) for r in results if r.get(key)]
    if not points:
        return None
    if len({n for n, _ in points}) == 1:
        n, t = points[0]
        return {"value": round(t * target / n, 2), "exponent": 1.0, "method": "proportional (one size measured)"}
    xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    value = math.exp(mean_y + slope * (math.log(target) - mean_x))
    return {"value": round(value, 2), "exponent": round(slope, 3),
            "method": f"t = c * N^k through {len(points)} sizes (least squares in log-log)"}


# ----------------------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_int, nargs="*", default=[20_000, 200_000],
                        help="files of each generated ImageFolder (default: 20000 200000)")
    parser.add_argument("--data", action="append", default=[], metavar="FOLDER",
                        help="an existing ImageFolder (its class folders) to measure as one more point")
    parser.add_argument("--classes", type=positive_int, default=1000, help="class folders of a generated folder")
    parser.add_argument("--image-size", type=positive_int, default=64, help="side of the generated JPEGs")
    parser.add_argument("--work", default="/tmp/soft_image_cache_bench",
                        help="generated folders (kept for later runs) and the caches go here")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="processes that check the files (default: the usable cores)")
    parser.add_argument("--restarts", type=positive_int, default=3, help="fresh-process restarts per size")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                        help="do not time MindSpore's ImageFolderDataset over the view")
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before each step (root)")
    parser.add_argument("--extrapolate", type=positive_int, default=IMAGENET_TRAIN_FILES,
                        help=f"files to extrapolate to (default: ImageNet's {IMAGENET_TRAIN_FILES:,})")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    from src.image_manifest import available_cores
    args.workers = args.workers or available_cores()
    if not args.sizes and not args.data:
        build_parser().error("give --sizes and / or --data")
    work = Path(args.work)
    points = [(generate_folder(work / f"n{n}", n, min(args.classes, n), args.image_size), n) for n in args.sizes]
    for data in args.data:
        if not Path(data).is_dir():
            build_parser().error(f"--data {data}: no such folder")
        points.append((Path(data).resolve(), count_files(data)))
    payload = {"benchmark": "image_cache", "meta": host_info(), "config": {k: v for k, v in vars(args).items()
                                                                         if k not in ("worker", "folder", "cache")},
               "results": [], "extrapolation": None}
    for index, (folder, files) in enumerate(sorted(points, key=lambda p: p[1])):
        payload["results"].append(measure_folder(args, folder, files, work / "caches" / f"{index}-{files}"))
        payload["extrapolation"] = {"files": args.extrapolate, **{
            key: extrapolate(payload["results"], key, args.extrapolate)
            for key in ("first_build_s", "restart_s", "restart_changed_s", "pipeline_s")}}
        if args.json:
            write_json(args.json, payload)
    rows = [[f"{r['files']:,}", fmt(r["first_build_s"], 2), fmt(r["cores_used"], 1), fmt(r["restart_s"], 2),
             fmt(r["list_s"], 2), fmt(r["restart_changed_s"], 2), fmt(r["pipeline_s"], 2)]
            for r in payload["results"]]
    guess = payload["extrapolation"]

    def predicted(key):
        return fmt(guess[key]["value"], 1) if guess.get(key) else None

    rows.append([f"{args.extrapolate:,} (extrapolated)", predicted("first_build_s"), None, predicted("restart_s"),
                 None, predicted("restart_changed_s"), predicted("pipeline_s")])
    print(format_table(["files", "first build s", "cores used", "restart s", "listing s", "1 changed s",
                        "pipeline s"], rows))
    fitted = [key for key in ("first_build_s", "restart_s") if guess.get(key)]
    if fitted:
        exponents = ", ".join(f"{key} k={guess[key]['exponent']}" for key in fitted)
        print(f"extrapolated to {args.extrapolate:,} files with {guess[fitted[0]]['method']}: {exponents}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
