"""Sharing a machine and its folders, through the real train.py: two runs and one output folder, locks left by
killed processes, waiting for the image cache, and what the input pipeline leaves out said on the console.

``busy``: run A is stopped (SIGSTOP) once it owns its folder; meanwhile a second run into that folder, a
``--resume auto`` into it and a run whose checkpoint folder is A's are refused in one sentence naming A
(host, PID, start time) and change nothing; then A goes on and finishes as if alone.

``recovered``: one run meets what killed processes leave: a ``.train.lock`` of a dead run in its output
folder, a ``build.lock`` of a dead builder in the training folder's image cache, and a ``build.lock`` of a live
process in the evaluation folder's cache (killed once the run says it waits for it); its training folder holds
unreadable files and files of other extensions. It takes over each lock with one line, says what it waits
for, names the skipped and ignored files on the console, finishes, and leaves the dataset as it was.
"""
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, tree_state
from src.image_manifest import cache_folder
from src.locks import RUN_LOCK_NAME, create_lock, owner_record
from test_train_cli import CONFIG, _env, _epochs, _error_lines, _run

pytestmark = [pytest.mark.cli, pytest.mark.slow]

#: a small, quick-to-compile soft_tiny; one epoch of 4 steps
TINY = ["--train_image_size", "32", "--eval_image_size", "32", "--batch_size", "4", "--eval_batch_size", "4",
        "--class_num", "2", "--model_args", "depths=[1,1,1,1]", "--train_num_workers", "1",
        "--eval_num_workers", "1", "--log_interval", "0", "--warmup_epochs", "0", "--max_epoch", "1"]
HOST = socket.gethostname()
CACHES = {".train.imagecache", ".val.imagecache"}
BAD_FILES = {"empty.jpg": b"", "garbage.jpg": b"not an image" * 30, "cut.png": None, "noise.jpeg": b"\xff\xd8" * 9,
             "zero.png": b"\x00" * 64, "text.bmp": b"BM but not a bitmap", "half.jpg": None}
IGNORED_FILES = ["class_0/scan.gif", "class_0/notes.txt", "class_1/clip.gif"]


def _make_data(root):
    """train/ (8 images per class, 7 unreadable files and 3 of other extensions) and val/ (2 per class)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        for cls in ("class_0", "class_1"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    bad = root / "train" / "class_1"
    jpeg = io.BytesIO()
    Image.open(bad / "img_0.png").save(jpeg, "JPEG")
    halves = {"cut.png": (bad / "img_0.png").read_bytes()[:60], "half.jpg": jpeg.getvalue()[:60]}
    for name, data in BAD_FILES.items():
        (bad / name).write_bytes(halves[name] if data is None else data)
    for rel in IGNORED_FILES:
        (root / "train" / rel).write_bytes(b"GIF89a" if rel.endswith(".gif") else b"a note")
    return root


def _train_args(data, out, *extra):
    return ["train.py", "--config_path", CONFIG, "--dataset_path", str(data), "--output_path", str(out)] + TINY + \
        list(extra)


def _dead_owner():
    """An owner record of this host whose process has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    owner = owner_record()
    owner.update(pid=proc.pid, pid_start=None, command="train.py (killed)")
    return owner


# ------------------------------------------------------------------------------------------ two runs, one folder
@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    base = tmp_path_factory.mktemp("busy")
    data_root = _make_data(base / "data")
    out, other = base / "out", base / "other"
    log = base / "owner_stdout.txt"
    with open(log, "w") as handle:
        owner = subprocess.Popen([sys.executable] + _train_args(data_root, out, "--eval_interval", "0"), cwd=REPO,
                                 env=_env(), stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and owner.poll() is None and not (out / RUN_LOCK_NAME).is_file():
            time.sleep(0.05)
        assert (out / RUN_LOCK_NAME).is_file(), log.read_text()[-3000:]
        owner.send_signal(signal.SIGSTOP)  # it owns the folder; nothing of it moves while the others try
        lock = (out / RUN_LOCK_NAME).read_text()
        before = {"out": tree_state(out), "data": tree_state(data_root, skip=CACHES)}
        runs = {"second": _run(_train_args(data_root, out)),
                "resume": _run(_train_args(data_root, out, "--resume", "auto")),
                "checkpoints": _run(_train_args(data_root, other, "--save_checkpoint_path", str(out)))}
        after = {"out": tree_state(out), "data": tree_state(data_root, skip=CACHES)}
        owner.send_signal(signal.SIGCONT)
        owner.wait(600)
    finally:
        if owner.poll() is None:
            owner.send_signal(signal.SIGCONT)
            owner.kill()
            owner.wait()
    return {"out": out, "other": other, "owner": owner, "owner_output": log.read_text(), "lock": lock,
            "runs": runs, "before": before, "after": after}


def _owner_named(busy):
    started = json.loads(busy["lock"])["started"]
    return f"(host {HOST}, PID {busy['owner'].pid}, started {started})"


def _refused(proc):
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not _epochs(proc.stdout)
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def test_a_second_run_into_a_busy_output_folder_stops_naming_the_owner(busy):
    assert _refused(busy["runs"]["second"]) == (
        f"ERROR: the output folder {busy['out']} is in use by another training run {_owner_named(busy)}: "
        "wait for it to end, or set another output_path.")
    assert busy["after"] == busy["before"]  # not a byte of the owner's folder or of the dataset changed


def test_resume_auto_into_a_busy_folder_is_refused_the_same_way(busy):
    assert _refused(busy["runs"]["resume"]) == (
        f"ERROR: the output folder {busy['out']} is in use by another training run {_owner_named(busy)}: "
        "wait for it to end, or set another output_path.")


def test_a_checkpoint_folder_of_a_busy_run_is_refused(busy):
    assert _refused(busy["runs"]["checkpoints"]) == (
        f"ERROR: the checkpoint folder {busy['out']} is in use by another training run {_owner_named(busy)}: "
        "wait for it to end, or set another save_checkpoint_path.")
    assert list(busy["other"].iterdir()) == []  # its own output folder was released, nothing written


def test_the_owner_finishes_as_if_alone(busy):
    assert busy["owner"].returncode == 0, busy["owner_output"][-3000:]
    out = busy["out"]
    logs = list(out.glob("train_*.log"))
    assert len(logs) == 1 and "in use" not in logs[0].read_text()
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["best.ckpt", "soft_tiny-1_4.ckpt"]
    assert not (out / RUN_LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------ after a crash
def _stream(proc, lines, wanted, seen):
    """Collect ``proc``'s stdout lines; set ``seen`` at the first line matching ``wanted``."""
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if wanted.search(line):
            seen.set()


@pytest.fixture(scope="module")
def recovered(tmp_path_factory):
    base = tmp_path_factory.mktemp("recovered")
    data_root = _make_data(base / "data")
    out = base / "out"
    out.mkdir()
    train, val = data_root / "train", data_root / "val"
    dead_run, dead_builder = _dead_owner(), _dead_owner()
    assert create_lock(str(out / RUN_LOCK_NAME), dead_run)
    train_lock = Path(cache_folder(str(train))) / "build.lock"
    val_lock = Path(cache_folder(str(val))) / "build.lock"
    assert create_lock(str(train_lock), dead_builder)
    builder = subprocess.Popen(["sleep", "600"])  # a live process that holds the evaluation cache's lock
    assert create_lock(str(val_lock), owner_record(builder.pid))
    before = {"train": tree_state(train), "val": tree_state(val)}
    lines, seen = [], threading.Event()
    proc = subprocess.Popen([sys.executable] + _train_args(data_root, out, "--eval_interval", "1"), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader = threading.Thread(target=_stream, args=(proc, lines, re.compile(rf"image cache of {val}: waiting"), seen))
    reader.start()
    try:
        waited = seen.wait(400)
        builder.kill()  # the builder dies while the run waits for it
        builder.wait()
        proc.wait(600)
        reader.join(30)
        stderr = proc.stderr.read()
    finally:
        for child in (proc, builder):
            if child.poll() is None:
                child.kill()
                child.wait()
    logs = list(out.glob("train_*.log"))
    return {"out": out, "train": train, "val": val, "proc": proc, "stdout": "\n".join(lines), "stderr": stderr,
            "waited": waited, "dead_run": dead_run, "dead_builder": dead_builder, "builder_pid": builder.pid,
            "train_lock": train_lock, "val_lock": val_lock, "before": before,
            "after": {"train": tree_state(train), "val": tree_state(val)},
            "log": logs[0].read_text() if len(logs) == 1 else f"{len(logs)} log files"}


def _console(recovered):
    """The run's console lines (its stdout), after checking that it finished."""
    proc = recovered["proc"]
    assert proc.returncode == 0, recovered["stdout"][-3000:] + recovered["stderr"][-3000:]
    assert len(_epochs(recovered["stdout"])) == 1
    return recovered["stdout"]


def _describe(owner):
    return f"host {owner['host']}, PID {owner['pid']}, started {owner['started']}"


def test_a_lock_left_by_a_dead_run_is_taken_over_with_one_line(recovered):
    console = _console(recovered)
    line = (f"taking over the output folder {recovered['out']}: the training run that held it "
            f"({_describe(recovered['dead_run'])}) is gone")
    assert console.count("taking over the output folder") == 1 and line in console
    assert line in recovered["log"]
    assert not (recovered["out"] / RUN_LOCK_NAME).exists()


def test_the_image_cache_lock_of_a_dead_builder_is_taken_over_at_once(recovered):
    console = _console(recovered)
    assert (f"image cache of {recovered['train']}: taking over {recovered['train_lock']}: the process that held it "
            f"({_describe(recovered['dead_builder'])}) is gone") in console
    assert f"image cache of {recovered['train']}: waiting" not in console  # no wait at all
    assert not recovered["train_lock"].exists()


def test_a_wait_for_the_image_cache_says_what_it_waits_for(recovered):
    console = _console(recovered)
    assert recovered["waited"], console[-3000:]
    waiting = [line for line in console.splitlines() if f"image cache of {recovered['val']}: waiting" in line]
    assert waiting and re.search(
        rf"waiting for the process that builds it \(host {HOST}, PID {recovered['builder_pid']}, started [\d: -]+; "
        rf"lock {recovered['val_lock']}; waited \d+s\)$", waiting[0]), waiting
    # the builder died during the wait: its lock is taken over at once
    assert re.search(rf"image cache of {recovered['val']}: taking over {recovered['val_lock']}: the process that held "
                     rf"it \(host {HOST}, PID {recovered['builder_pid']}, .*\) is gone", console)


def test_the_first_build_of_the_image_cache_shows_its_progress(recovered):
    console = _console(recovered)
    files = 16 + len(BAD_FILES)
    assert re.search(rf"image cache of {recovered['train']}: checking {files} files with \d+ threads: every file "
                     r"\(first build", console)
    assert re.search(rf"image cache of {recovered['train']}: checked {files}/{files} files in \d+s", console)


def test_skipped_training_files_are_named_on_the_console(recovered):
    console = _console(recovered)
    names = sorted(f"class_1/{name}" for name in BAD_FILES)
    assert (f"skipped {len(BAD_FILES)} unreadable file(s) in {recovered['train']}: {', '.join(names[:5])} and "
            f"{len(names) - 5} more (the log names each with its reason)") in console
    assert "skipping corrupt image" not in console  # one line on the console, ...
    for name in BAD_FILES:  # ... every file with its reason in the log
        assert recovered["log"].count(f"skipping corrupt image: {recovered['train'] / 'class_1' / name} (") == 1


def test_files_of_other_extensions_are_counted_with_where(recovered):
    console = _console(recovered)
    assert (f"ignored 3 file(s) in {recovered['train']} that the pipeline does not read (.gif: 2, .txt: 1), in "
            "class_0/ (2), class_1/ (1); it reads .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp/.ppm/.pgm files in the class "
            "folders") in console
    assert f"ignored 3 file(s) in {recovered['val']}" not in console


def test_the_dataset_is_left_as_it_was(recovered):
    _console(recovered)
    assert recovered["after"] == recovered["before"]
