"""Inputs train.py used to accept in silence, refused in one sentence before any training (real train.py):
a training folder with one class, a class that only the evaluation folder has, a YAML key set twice, an empty
config file. Each: exit code 1, one ``ERROR:`` line naming the thing to fix, no traceback, the dataset and
the config file unchanged, no lock left behind."""
import pytest

from helpers import tree_state
from src.locks import RUN_LOCK_NAME
from test_train_cli import CONFIG, _epochs, _error_lines, _run

pytestmark = pytest.mark.cli

ARGS = ["--train_image_size", "32", "--eval_image_size", "32", "--batch_size", "2", "--eval_batch_size", "2",
        "--model_args", "depths=[1,1,1,1]", "--max_epoch", "1", "--train_num_workers", "1", "--eval_num_workers", "1"]


def _refused(args, watched):
    """Run train.py ``args``; returns its one ERROR line after checking the exit code and that nothing under
    the ``watched`` folders changed."""
    before = {str(path): tree_state(path, skip={".train.imagecache", ".val.imagecache"}) for path in watched}
    proc = _run(["train.py"] + [str(a) for a in args])
    after = {str(path): tree_state(path, skip={".train.imagecache", ".val.imagecache"}) for path in watched}
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not _epochs(proc.stdout)
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-2000:]
    assert after == before
    return errors[0]


def test_a_training_folder_with_one_class_is_refused(image_folder_factory, tmp_path):
    root = image_folder_factory(per_class=4, classes=["cat"], size=(36, 36))
    out = tmp_path / "out"
    error = _refused(["--config_path", CONFIG, "--dataset_path", root, "--output_path", out, "--class_num", 1] + ARGS,
                     [root])
    assert error == (f"ERROR: the training folder {root / 'train'} has one class folder (cat): a classifier learns "
                     "nothing from one class (loss 0, accuracy 1.0); add a folder per class")
    assert not (out / RUN_LOCK_NAME).exists() and not list(out.glob("*.ckpt"))


@pytest.mark.parametrize("class_num", [2, 3])  # the training folder's count, and the evaluation folder's
def test_a_class_only_in_the_evaluation_folder_is_named(class_num, image_folder_factory, tmp_path):
    root = image_folder_factory(per_class=2, classes=["cat", "dog"], splits=("train",), size=(36, 36))
    image_folder_factory(per_class=2, classes=["cat", "cow", "dog"], splits=("val",), size=(36, 36), root=root)
    out = tmp_path / "out"
    error = _refused(["--config_path", CONFIG, "--dataset_path", root, "--output_path", out, "--class_num",
                      class_num] + ARGS, [root])
    assert error == (f"ERROR: the evaluation and training folders must have the same classes, but there are class "
                     f"folder(s) cow only in the evaluation folder {root / 'val'}: labels would not match; give both "
                     "folders the same classes")
    assert not (out / RUN_LOCK_NAME).exists()


def test_a_yaml_key_set_twice_is_refused_naming_both_lines(tmp_path):
    config = tmp_path / "twice.yml"
    config.write_text("backbone: soft_tiny\nbatch_size: 64\nmax_epoch: 3\n# later, by someone else\n"
                      "batch_size: 8\n")
    error = _refused(["--config_path", config, "--output_path", tmp_path / "out"], [tmp_path])
    assert error == f"ERROR: config file {config} sets 'batch_size' twice (lines 2 and 5); keep one of them"
    assert not (tmp_path / "out").exists()


def test_an_empty_config_file_is_refused(tmp_path):
    config = tmp_path / "empty.yml"
    config.write_text("# settings to come\n")
    error = _refused(["--config_path", config, "--output_path", tmp_path / "out"], [tmp_path])
    assert error == (f"ERROR: config file {config} is empty (no key: value pairs); fill it in, e.g. from "
                     "config/soft_tiny.yml, or leave out --config_path to use config/SOFT_config.yml")
    assert not (tmp_path / "out").exists()
