"""ModelArts adapter (src/model_utils/moxing_adapter.py) and device_adapter, with a fake ``moxing``.

tests/fake_moxing/moxing maps ``obs://`` URLs to a local folder ($FAKE_OBS_ROOT) and logs each call.
No MindSpore is imported here.
"""
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_moxing"

LAUNCH_VARS = ("DEVICE_ID", "RANK_ID", "RANK_SIZE", "MS_WORKER_NUM", "MS_NODE_ID", "MS_ROLE", "MS_SCHED_HOST",
               "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "JOB_ID",
               "MA_JOB_ID", "RANK_TABLE_FILE", "MINDSPORE_HCCL_CONFIG_PATH")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def fake_moxing(clean_env, tmp_path):
    """The fake moxing on sys.path, an OBS bucket with data + checkpoint, and the local cache folders."""
    clean_env.syspath_prepend(str(FAKE))
    sys.modules.pop("moxing", None)
    sys.modules.pop("moxing.file", None)
    obs = tmp_path / "obs"
    (obs / "bucket" / "data" / "train" / "cat").mkdir(parents=True)
    (obs / "bucket" / "data" / "train" / "cat" / "a.png").write_bytes(b"png")
    (obs / "bucket" / "data" / "val" / "cat").mkdir(parents=True)
    (obs / "bucket" / "ckpt").mkdir(parents=True)
    (obs / "bucket" / "ckpt" / "model.ckpt").write_bytes(b"weights")
    clean_env.setenv("FAKE_OBS_ROOT", str(obs))
    clean_env.setenv("FAKE_MOXING_LOG", str(tmp_path / "mox.log"))
    clean_env.setenv("MOXING_LOCK_DIR", str(tmp_path / "locks"))
    clean_env.setenv("JOB_ID", f"test{os.getpid()}_{tmp_path.name}")
    yield tmp_path
    sys.modules.pop("moxing", None)
    sys.modules.pop("moxing.file", None)


def _config(tmp_path, **extra):
    from src.model_utils.config import make_config
    values = {"enable_modelarts": True, "data_url": "obs://bucket/data", "checkpoint_url": "obs://bucket/ckpt/model.ckpt",
              "train_url": "obs://bucket/out", "data_path": str(tmp_path / "cache" / "data"),
              "load_path": str(tmp_path / "cache" / "ckpt"), "output_path": str(tmp_path / "cache" / "out")}
    values.update(extra)
    return make_config(values)


def _log_lines(tmp_path):
    log = tmp_path / "mox.log"
    return log.read_text().splitlines() if log.exists() else []


# ------------------------------------------------------------------------------------------ device_adapter
def test_device_adapter_defaults(clean_env):
    from src.model_utils import device_adapter as da
    assert (da.get_device_id(), da.get_device_num(), da.get_rank_id(), da.get_local_rank_id()) == (0, 1, 0, 0)
    assert da.get_job_id() == "default"
    assert da.is_first_local_rank()


def test_device_adapter_rank_table_env(clean_env):
    from src.model_utils import device_adapter as da
    for k, v in {"DEVICE_ID": "3", "RANK_ID": "11", "RANK_SIZE": "16", "JOB_ID": "job7"}.items():
        clean_env.setenv(k, v)
    assert (da.get_device_id(), da.get_device_num(), da.get_rank_id(), da.get_local_rank_id()) == (3, 16, 11, 3)
    assert da.get_job_id() == "job7" and not da.is_first_local_rank()
    assert "rank 11/16" in da.describe()


def test_device_adapter_msrun_env(clean_env):
    from src.model_utils import device_adapter as da
    clean_env.setenv("MS_WORKER_NUM", "4")
    clean_env.setenv("MS_NODE_ID", "2")
    assert (da.get_device_num(), da.get_rank_id()) == (4, 2)
    clean_env.setenv("LOCAL_RANK", "0")
    assert da.is_first_local_rank()


def test_device_adapter_single_device_on_device_5_is_first(clean_env):
    from src.model_utils import device_adapter as da
    clean_env.setenv("DEVICE_ID", "5")
    assert da.get_local_rank_id() == 0  # a standalone job on device 5 still copies its own data


@pytest.mark.parametrize("env, launcher", [
    ({}, None),
    ({"RANK_ID": "0", "RANK_SIZE": "1", "DEVICE_ID": "0"}, None),                     # the standalone scripts
    ({"RANK_TABLE_FILE": "/t.json", "RANK_SIZE": "1"}, None),                         # a one-device rank table
    ({"RANK_TABLE_FILE": "/t.json", "RANK_SIZE": "8", "RANK_ID": "3"}, "rank table"),  # the Ascend script, ModelArts
    ({"MINDSPORE_HCCL_CONFIG_PATH": "/t.json", "RANK_SIZE": "8"}, "rank table"),
    ({"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "1", "MS_SCHED_HOST": "127.0.0.1"}, "msrun"),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}, "mpirun"),
])
def test_device_adapter_names_the_launcher(clean_env, env, launcher):
    from src.model_utils import device_adapter as da
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert da.get_launcher() == launcher


def test_device_adapter_bad_value(clean_env):
    from src.model_utils import device_adapter as da
    clean_env.setenv("RANK_SIZE", "eight")
    with pytest.raises(ValueError, match="RANK_SIZE"):
        da.get_device_num()


# ------------------------------------------------------------------------------------------ moxing_wrapper
def test_disabled_wrapper_calls_through_without_moxing(clean_env, tmp_path):
    sys.modules.pop("moxing", None)
    from src.model_utils.config import make_config
    from src.model_utils.moxing_adapter import moxing_wrapper
    config = make_config({"dataset_path": str(tmp_path)})
    calls = []

    @moxing_wrapper(config)
    def run(x):
        calls.append(x)
        return x * 2

    assert run(21) == 42 and calls == [21]
    assert "moxing" not in sys.modules
    assert config.dataset_path == str(tmp_path)


def test_enabled_without_moxing_is_a_clear_error(clean_env, tmp_path):
    sys.modules.pop("moxing", None)
    import importlib.util
    if importlib.util.find_spec("moxing") is not None:
        pytest.skip("a real moxing is installed")
    from src.model_utils.moxing_adapter import MoxingError, moxing_wrapper
    config = _config(tmp_path)
    with pytest.raises(MoxingError, match=r"moxing.*enable_modelarts 0"):
        moxing_wrapper(config)(lambda: None)()


def test_inputs_fetched_paths_rewritten_outputs_copied_back(fake_moxing):
    from src.model_utils.moxing_adapter import moxing_wrapper
    tmp = fake_moxing
    config = _config(tmp)
    seen = {}

    def pre():
        seen["pre"] = True

    def post():
        seen["post"] = True

    @moxing_wrapper(config, pre_process=pre, post_process=post)
    def run():
        seen["dataset_path"] = config.dataset_path
        seen["eval_path"] = config.eval_path
        seen["ckpt"] = config.checkpoint_file_path
        assert (Path(config.dataset_path) / "train" / "cat" / "a.png").read_bytes() == b"png"
        assert Path(config.checkpoint_file_path).read_bytes() == b"weights"
        (Path(config.output_path) / "result.txt").write_text("ok")
        return "done"

    assert run() == "done"
    assert seen["pre"] and seen["post"]
    assert seen["dataset_path"] == str(tmp / "cache" / "data")
    assert seen["eval_path"] == str(tmp / "cache" / "data" / "val")
    assert seen["ckpt"] == str(tmp / "cache" / "ckpt" / "model.ckpt")
    assert (tmp / "obs" / "bucket" / "out" / "result.txt").read_text() == "ok"
    calls = [line.split()[1:] for line in _log_lines(tmp)]
    assert ["copy_parallel", "obs://bucket/data", str(tmp / "cache" / "data")] in calls
    assert ["copy", "obs://bucket/ckpt/model.ckpt", str(tmp / "cache" / "ckpt" / "model.ckpt")] in calls
    assert calls[-1] == ["copy_parallel", str(tmp / "cache" / "out"), "obs://bucket/out"]


def test_relative_paths_are_taken_inside_the_local_copies(fake_moxing, clean_env):
    from src.model_utils import moxing_adapter
    from src.model_utils.moxing_adapter import moxing_wrapper
    tmp = fake_moxing
    clean_env.setattr(moxing_adapter, "DEFAULT_OUTPUT_PATH", str(tmp / "cache" / "train"))
    config = _config(tmp, dataset_path="imagenet", checkpoint_url="obs://bucket/ckpt/",
                     checkpoint_file_path="model.ckpt", output_path="")
    moxing_wrapper(config)(lambda: None)()
    assert config.dataset_path == str(tmp / "cache" / "data" / "imagenet")
    assert config.checkpoint_file_path == str(tmp / "cache" / "ckpt" / "model.ckpt")
    assert Path(config.checkpoint_file_path).is_file()
    assert config.output_path == str(tmp / "cache" / "train")  # the default for an empty output_path


def test_a_data_path_variable_left_unset_means_the_copied_data(fake_moxing, clean_env):
    """A per-model config on ModelArts: its $DATA_PATH/imagenet is not set there; data_url's copy is the data."""
    from src.model_utils import moxing_adapter as ma

    clean_env.delenv("DATA_PATH", raising=False)
    config = _config(fake_moxing, dataset_path="$DATA_PATH/imagenet")
    ma.localise_config_paths(config, data_local=config.data_path)
    assert config.dataset_path == config.data_path and config.eval_path == os.path.join(config.data_path, "val")


def test_outputs_copied_back_on_failure_and_error_reraised(fake_moxing):
    from src.model_utils.moxing_adapter import moxing_wrapper
    tmp = fake_moxing
    config = _config(tmp)

    @moxing_wrapper(config)
    def run():
        (Path(config.output_path) / "partial.log").write_text("epoch 1")
        raise ValueError("training blew up")

    with pytest.raises(ValueError, match="training blew up"):
        run()
    assert (tmp / "obs" / "bucket" / "out" / "partial.log").read_text() == "epoch 1"


def test_failed_copy_back_does_not_hide_the_original_error(fake_moxing):
    from src.model_utils.moxing_adapter import moxing_wrapper
    tmp = fake_moxing
    config = _config(tmp, train_url="/nonexistent-root-folder/\0bad")

    @moxing_wrapper(config)
    def run():
        raise KeyError("original")

    with pytest.raises(KeyError, match="original"):
        run()


_RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {fake!r})
    from src.model_utils.config import make_config
    from src.model_utils.moxing_adapter import moxing_wrapper
    tmp = {tmp!r}
    config = make_config({{"enable_modelarts": True, "data_url": "obs://bucket/data", "train_url": "obs://bucket/out",
                          "data_path": tmp + "/cache/data", "output_path": tmp + "/cache/out"}})

    @moxing_wrapper(config)
    def run():
        ok = os.path.isfile(os.path.join(config.dataset_path, "train", "cat", "a.png"))
        print(json.dumps({{"device": os.environ["DEVICE_ID"], "data_ready": ok}}))

    run()
""")


def test_one_copy_per_server_other_ranks_wait(fake_moxing):
    tmp = fake_moxing
    script = tmp / "rank.py"
    script.write_text(_RANK_SCRIPT.format(repo=str(REPO), fake=str(FAKE), tmp=str(tmp)))
    procs = []
    for device in (1, 2, 0):  # the copying rank starts last: the others must wait for it
        env = dict(os.environ, DEVICE_ID=str(device), RANK_ID=str(device), RANK_SIZE="3",
                   FAKE_MOXING_DELAY="1.0")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert '"data_ready": true' in out, out + err
    data_copies = [line for line in _log_lines(tmp) if " obs://bucket/data " in line]
    assert len(data_copies) == 1
    out_copies = [line for line in _log_lines(tmp) if line.endswith(" obs://bucket/out")]
    assert len(out_copies) == 1


def test_waiting_rank_fails_when_the_copy_failed(fake_moxing, clean_env):
    from src.model_utils import moxing_adapter as ma
    tmp = fake_moxing
    mox = ma.import_moxing()
    with pytest.raises(ma.MoxingError, match="failed"):
        ma.sync_data(mox, "obs://bucket/missing", str(tmp / "cache" / "x"), "data")
    clean_env.setenv("DEVICE_ID", "1")
    clean_env.setenv("RANK_SIZE", "2")
    with pytest.raises(ma.MoxingError, match="first process of this server failed"):
        ma.sync_data(mox, "obs://bucket/missing", str(tmp / "cache" / "x"), "data", timeout=5)


@pytest.mark.cli
@pytest.mark.slow  # export.py in a subprocess
def test_export_as_a_modelarts_job(fake_moxing):
    """export.py with enable_modelarts: the checkpoint comes from OBS, the MINDIR goes back to train_url."""
    tmp = fake_moxing
    ckpt_dir = tmp / "obs" / "bucket" / "ckpt"
    code = ("import os, sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\nimport mindspore as ms\nfrom models import create_model\n"
            "net = create_model('SwiftFormer_XS', num_classes=2)\n"
            f"ms.save_checkpoint(net, {str(ckpt_dir / 'sf.ckpt')!r})\n")
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "export.py", "--config_path", "config/SOFT_export.yml", "--enable_modelarts", "1",
         "--checkpoint_url", "obs://bucket/ckpt/sf.ckpt", "--checkpoint_file_path", "", "--train_url", "obs://bucket/out",
         "--load_path", str(tmp / "cache" / "ckpt"), "--output_path", str(tmp / "cache" / "out"),
         "--backbone", "SwiftFormer_XS", "--class_num", "2", "--eval_image_size", "64", "--file_name", "sf"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp / "obs" / "bucket" / "out" / "sf.mindir").is_file()
    assert (tmp / "cache" / "ckpt" / "sf.ckpt").is_file()


# ------------------------------------------------------------------------------------------ archives
def test_unsafe_archive_members_are_refused(tmp_path):
    from src.model_utils.moxing_adapter import MoxingError, extract_archives

    (tmp_path / "train").mkdir()
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(tmp_path / "train" / "evil.tar", "w") as archive:
        archive.add(payload, arcname="../escaped.txt")
    with pytest.raises(MoxingError, match=r"refusing to unpack .*evil\.tar: its member '\.\./escaped\.txt'"):
        extract_archives(str(tmp_path))
    assert not (tmp_path / "escaped.txt").exists()


def test_per_class_archives_unpack_into_their_own_folders(tmp_path):
    """ImageNet's training archive holds one tar of images per class (n01440764.tar, ...)."""
    from src.model_utils.moxing_adapter import extract_archives

    (tmp_path / "train").mkdir()
    for cls in ("n01", "n02"):
        image = tmp_path / f"{cls}_0.JPEG"
        image.write_bytes(b"jpeg")
        with tarfile.open(tmp_path / "train" / f"{cls}.tar", "w") as archive:
            archive.add(image, arcname=image.name)
    assert len(extract_archives(str(tmp_path))) == 2
    assert sorted(os.listdir(tmp_path / "train")) == ["n01", "n02"]
    assert os.listdir(tmp_path / "train" / "n01") == ["n01_0.JPEG"]
