"""Smoke tests of the benchmark tools (benchmarks/throughput.py, benchmarks/scaling.py).

The two real runs (soft_tiny with a fixed landmark grid at 64x64, batch 1, one timed call) start
together in the background, so that their graph compilations overlap; the failure paths use a
1-second timeout and a tiny memory limit, which stop the workers while they import MindSpore.
"""
import importlib.util
import json
import subprocess
import sys

import pytest

from benchmarks.throughput import parse_model_spec
from helpers import REPO

pytestmark = pytest.mark.slow

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TIMEOUT = 300


def _start(args):
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Both tools on a tiny setting, started at once; yields {name: (Popen, output paths)}."""
    out = tmp_path_factory.mktemp("bench")
    runs = {
        "throughput": (_start(["benchmarks/throughput.py", "--model", "soft_tiny:pool", "--image-size", 64,
                               "--batch-size", 1, "--iters", 1, "--warmup", 0, "--mode", "both",
                               "--json", out / "throughput.json"]),
                       {"json": out / "throughput.json"}),
        "scaling": (_start(["benchmarks/scaling.py", "--sizes", 64, "--models", "soft_tiny", "--batch-size", 1,
                            "--iters", 1, "--json", out / "scaling.json", "--plot", out / "scaling.png"]),
                    {"json": out / "scaling.json", "plot": out / "scaling.png"}),
    }
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_throughput_writes_json_and_table(smoke_runs):
    proc, paths = smoke_runs["throughput"]
    rc, out, err = _finish(proc)
    assert rc == 0, err[-3000:]
    data = json.loads(paths["json"].read_text())
    assert data["benchmark"] == "throughput"
    for key in ("date", "cpu_count", "device", "mindspore_version"):
        assert data["meta"][key], key
    (row,) = data["results"]
    assert row["model"] == "soft_tiny:pool" and row["image_size"] == 64 and row["batch"] == 1
    assert row["status"] == row["infer_status"] == row["train_status"] == "ok"
    assert row["params"] == 13_069_056
    for key in ("compile_s", "infer_compile_s", "infer_ms_per_batch", "infer_img_s", "train_compile_s",
                "train_ms_per_step", "train_img_s", "peak_rss_mb", "rss_baseline_mb", "rss_growth_mb"):
        assert isinstance(row[key], (int, float)) and row[key] > 0, key
    assert row["infer_img_s"] == pytest.approx(1000.0 / row["infer_ms_per_batch"], rel=1e-3)
    assert row["peak_rss_mb"] > row["rss_baseline_mb"]
    assert row["device"] and row["mindspore_version"] and row["cpu_count"] >= 1 and row["date"]
    assert "soft_tiny:pool" in out and "infer ms/batch" in out  # the table
    assert "soft_tiny:pool: compiling" in err and "infer 1/1" in err and "train 1/1" in err  # progress


def test_scaling_writes_json_table_and_plot(smoke_runs):
    proc, paths = smoke_runs["scaling"]
    rc, out, err = _finish(proc)
    assert rc == 0, err[-3000:]
    data = json.loads(paths["json"].read_text())
    assert data["benchmark"] == "scaling" and data["meta"]["mindspore_version"]
    (rec,) = data["results"]
    assert rec["model"] == "soft_tiny" and rec["image_size"] == 64 and rec["tokens"] == 16 * 16
    assert rec["status"] == "ok" and rec["time_s"] > 0 and rec["ms_median"] > 0 and rec["peak_rss_mb"] > 0
    assert rec["time_ratio"] == 1.0 and rec["reference_size"] == 64
    assert "soft_tiny" in out and "time/64" in out
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib not installed: the PNG is not checked")
    assert data["plot"] == str(paths["plot"])
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_records_timeouts_and_skips_larger_sizes(tmp_path):
    rc, out, err = _finish(_start(["benchmarks/scaling.py", "--sizes", 64, 32, "--models", "soft_tiny",
                                   "--timeout", 1, "--json", tmp_path / "s.json", "--no-plot"]))
    assert rc == 0, err[-3000:]
    results = json.loads((tmp_path / "s.json").read_text())["results"]
    assert [(r["image_size"], r["status"]) for r in results] == [(32, "timeout"), (64, "skipped")]
    assert "timeout at 32" in results[1]["error"]
    assert "timeout" in out and "skipped" in out


def test_memory_limit_is_recorded_as_oom(tmp_path):
    rc, out, err = _finish(_start(["benchmarks/throughput.py", "--model", "soft_tiny", "--image-size", 32,
                                   "--mode", "both", "--max-memory-mb", 60, "--json", tmp_path / "t.json"]))
    assert rc == 1  # a failed run is a non-zero exit, with the JSON written all the same
    (row,) = json.loads((tmp_path / "t.json").read_text())["results"]
    assert row["status"] == row["infer_status"] == row["train_status"] == "oom"
    assert "--max-memory-mb" in row["infer_error"]


def test_unknown_model_is_an_error_record(tmp_path):
    rc, out, err = _finish(_start(["benchmarks/throughput.py", "--model", "soft_tiney", "--image-size", 32,
                                   "--json", tmp_path / "t.json"]))
    assert rc == 1
    (row,) = json.loads((tmp_path / "t.json").read_text())["results"]
    assert row["status"] == "error" and "Did you mean 'soft_tiny'" in row["infer_error"]
    assert row["train_status"] == "error"  # not run again: the model cannot be built


def test_bad_arguments_are_rejected():
    for args in (["benchmarks/throughput.py", "--image-size", 100], ["benchmarks/scaling.py", "--sizes", 0],
                 ["benchmarks/scaling.py", "--models", "soft_tiny:conv"]):
        rc, _, err = _finish(_start(args))
        assert rc == 2 and "error:" in err, args


def test_parse_model_spec():
    assert parse_model_spec("soft_tiny") == ("soft_tiny", {})
    assert parse_model_spec("soft_tiny:pool") == ("soft_tiny", {"landmarks": "pool"})
    assert parse_model_spec("soft_norm_tiny:pool=4") == ("soft_norm_tiny", {"landmarks": "pool", "landmark_grid": 4})
    for bad in ("", ":pool", "soft_tiny:grid", "soft_tiny:pool=0", "soft_tiny:pool=x"):
        with pytest.raises(ValueError):
            parse_model_spec(bad)
