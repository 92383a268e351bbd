"""Smoke test of benchmarks/image_cache.py: two generated sizes (the larger one past the worker-process threshold)
and an existing ImageFolder; checks the JSON, the table and the extrapolation. No timed assertion: the targets
(ImageNet's restart under 30 s, a first build on all cores) are read from the benchmark's own output."""
import json
import math

import pytest

from helpers import run_cli
from src.image_manifest import _PROCESS_MIN_FILES

pytestmark = pytest.mark.slow


def test_image_cache_benchmark_measures_extrapolates_and_writes_json(image_folder_factory, tmp_path):
    data = image_folder_factory(per_class=5, classes=3, splits=())
    sizes = (200, _PROCESS_MIN_FILES + 88)
    proc = run_cli("benchmarks/image_cache.py", "--sizes", *sizes, "--classes", 4, "--work", tmp_path / "work",
                   "--data", data, "--restarts", 2, "--workers", 2, "--json", tmp_path / "out.json", timeout=600)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["benchmark"] == "image_cache" and result["meta"]["cpu_count_usable"] >= 1
    rows = result["results"]
    assert [r["files"] for r in rows] == [15, *sizes]  # smallest first
    for row in rows:
        assert row["usable"] == row["files"] and row["problems"] == 0 and row["workers"] == 2
        assert row["first_build_s"] > 0 and row["cpu_s"] > 0 and row["cores_used"] > 0
        assert len(row["restart_samples_s"]) == 2 and row["restart_s"] >= 0 and row["list_s"] >= 0
        assert row["restart_changed_s"] > 0 and row["pipeline_s"] is not None
    guess = result["extrapolation"]
    assert guess["files"] == 1_281_167
    build = guess["first_build_s"]
    assert build["value"] > 0 and "least squares in log-log" in build["method"]
    points = [(r["files"], r["first_build_s"]) for r in rows]
    expected = math.exp(sum(math.log(t) for _, t in points) / 3 + build["exponent"] * (
        math.log(1_281_167) - sum(math.log(n) for n, _ in points) / 3))
    assert build["value"] == pytest.approx(expected, rel=1e-2)
    assert f"checking {sizes[1]} files with 2 processes" in proc.stderr  # the larger build: worker processes
    assert f"checked {sizes[1]}/{sizes[1]} files in" in proc.stderr
    assert "1,281,167 (extrapolated)" in proc.stdout and "restart s" in proc.stdout
    # a second run reuses the generated folders
    again = run_cli("benchmarks/image_cache.py", "--sizes", sizes[0], "--classes", 4, "--work", tmp_path / "work",
                    "--restarts", 1, "--no-pipeline", timeout=300)
    assert "generating" not in again.stderr and "proportional (one size measured)" in again.stdout


def test_bad_arguments_are_refused(tmp_path):
    for args in (["--sizes", "0"], ["--sizes", "--data", tmp_path / "missing"]):
        proc = run_cli("benchmarks/image_cache.py", "--work", tmp_path, *args, check=False, timeout=60)
        assert proc.returncode == 2 and "error:" in proc.stderr, proc.stderr
