"""Smoke test of benchmarks/pipeline.py: a tiny run prints both pipelines' figures and their ratios.

No timed assertion: the throughput target (ratio >= 1.0 on real photos) lives in the benchmark itself.
"""
import re

import pytest

from helpers import run_cli

pytestmark = pytest.mark.slow


def test_pipeline_benchmark_prints_both_figures_and_the_ratio(image_folder_factory):
    root = image_folder_factory(per_class=6, splits=("train", "val"), size=(72, 60), fmt="JPEG")
    out = run_cli("benchmarks/pipeline.py", "--data", root, "--workers", "1", "--batch-size", "4",
                  "--image-size", "32", "--rounds", "2", "--batches", "2", "--warmup", "1", timeout=300).stdout
    for name in ("train", "eval"):
        match = re.search(rf"^{name}: ours ([\d.]+) img/s, plain MindSpore ([\d.]+) img/s, ratio ([\d.]+)$", out, re.M)
        assert match, out
        ours, plain, ratio = map(float, match.groups())
        assert ours > 0 and plain > 0 and ratio == pytest.approx(ours / plain, abs=0.01)
        assert len(re.findall(rf"^  {name} round \d: (ours|plain) ", out, re.M)) == 4  # alternated rounds
    assert re.search(r"^data setup \(manifests\): [\d.]+ s$", out, re.M)
