"""Lock files that name their owner (src/locks.py): who owns a folder, when a lock counts as left by a dead
process, and that a lock is only ever removed by its owner or in place of a dead one. The same cases through
the real train.py are in test_shared_folders.py."""
import json
import os
import socket
import subprocess

import pytest

from src.locks import (RUN_LOCK_NAME, FolderInUse, claim_folders, create_lock, owner_record, owner_state,
                       read_lock)

pytestmark = pytest.mark.unit


@pytest.fixture
def live_process():
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _claim(folder):
    return claim_folders([(str(folder), "output folder", "output_path")])


def test_a_folder_of_a_live_run_is_refused_naming_it(tmp_path, live_process):
    owner = owner_record(live_process.pid)
    assert create_lock(str(tmp_path / RUN_LOCK_NAME), owner)
    before = (tmp_path / RUN_LOCK_NAME).read_bytes()
    with pytest.raises(FolderInUse) as err:
        with _claim(tmp_path):
            pass
    message = str(err.value)
    assert message == (f"the output folder {tmp_path} is in use by another training run (host "
                       f"{socket.gethostname()}, PID {live_process.pid}, started {owner['started']}): wait for it "
                       "to end, or set another output_path.")
    assert (tmp_path / RUN_LOCK_NAME).read_bytes() == before  # the owner's lock is left alone


def test_a_lock_of_a_dead_or_reused_pid_is_taken_over_with_one_line(tmp_path, live_process):
    dead = owner_record()
    dead.update(pid=_dead_pid(), pid_start=None)
    reused = owner_record(live_process.pid)
    reused["pid_start"] -= 1  # that PID now belongs to a process started later
    for stale in (dead, reused):
        assert owner_state(stale) == "gone"
        assert create_lock(str(tmp_path / RUN_LOCK_NAME), stale)
        with _claim(tmp_path) as notes:
            assert notes == [f"taking over the output folder {tmp_path}: the training run that held it (host "
                             f"{stale['host']}, PID {stale['pid']}, started {stale['started']}) is gone"]
            mine = read_lock(str(tmp_path / RUN_LOCK_NAME))[1]
            assert (mine["host"], mine["pid"]) == (socket.gethostname(), os.getpid())
        assert not (tmp_path / RUN_LOCK_NAME).exists()  # released at the end of the block


def test_a_lock_of_another_host_or_without_an_owner_is_refused(tmp_path):
    other = owner_record()
    other["host"] = "gpu-node-17"
    lock = tmp_path / RUN_LOCK_NAME
    assert create_lock(str(lock), other)
    with pytest.raises(FolderInUse, match=rf"on another host \(host gpu-node-17, PID {other['pid']}, started .*\), "
                                          rf"which cannot be checked from here: set another output_path, or delete "
                                          rf"{lock} if that run has ended\."):
        with _claim(tmp_path):
            pass
    lock.write_text("not json")
    with pytest.raises(FolderInUse, match="holds a lock file .* that is not a training run's: delete it if"):
        with _claim(tmp_path):
            pass
    assert lock.read_text() == "not json"


def test_every_folder_is_released_however_the_block_ends(tmp_path, live_process):
    out, ckpt, busy = tmp_path / "out", tmp_path / "ckpt", tmp_path / "busy"
    for folder in (out, ckpt, busy):
        folder.mkdir()
    with pytest.raises(RuntimeError):
        with claim_folders([(str(out), "output folder", "output_path"),
                            (str(ckpt), "checkpoint folder", "save_checkpoint_path")]):
            assert (out / RUN_LOCK_NAME).is_file() and (ckpt / RUN_LOCK_NAME).is_file()
            raise RuntimeError("the run failed")
    assert not (out / RUN_LOCK_NAME).exists() and not (ckpt / RUN_LOCK_NAME).exists()
    # a busy second folder: the first one is not kept either
    create_lock(str(busy / RUN_LOCK_NAME), owner_record(live_process.pid))
    with pytest.raises(FolderInUse, match="checkpoint folder"):
        with claim_folders([(str(out), "output folder", "output_path"),
                            (str(busy), "checkpoint folder", "save_checkpoint_path")]):
            pass
    assert not (out / RUN_LOCK_NAME).exists()
    # the same folder twice (checkpoints saved into the output folder): one lock
    with claim_folders([(str(out), "output folder", "output_path"),
                        (str(out), "checkpoint folder", "save_checkpoint_path")]) as notes:
        assert notes == [] and json.loads((out / RUN_LOCK_NAME).read_text())["pid"] == owner_record()["pid"]
    assert not (out / RUN_LOCK_NAME).exists()


def test_a_lock_replaced_by_another_owner_is_not_removed(tmp_path):
    lock = tmp_path / RUN_LOCK_NAME
    other = owner_record()
    other["host"] = "elsewhere"
    with _claim(tmp_path):
        lock.unlink()  # someone deleted ours, another run took the folder
        create_lock(str(lock), other)
    assert json.loads(lock.read_text())["host"] == "elsewhere"
