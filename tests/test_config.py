"""Configuration system: schema, YAML files, command-line overrides, errors."""
import glob
import os

import pytest
import yaml

from models import list_models
from src.model_utils.config import (DEFAULT_CONFIG, IGNORED_KEYS, KEY_ALIASES, REPO_ROOT, SCHEMA, Config,
                                    ConfigError, format_help, load_config, make_config)

pytestmark = pytest.mark.unit

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "config", "*.yml")))

# SPEC section 7: keys of the original MindSpore port that must keep working.
LEGACY_KEYS = """enable_modelarts data_url train_url checkpoint_url output_path data_path dataset_path
train_image_size interpolation crop_min batch_size train_num_workers eval_path eval_image_size eval_batch_size
eval_interval eval_offset eval_num_workers backbone class_num pretrained lr_decay_mode lr_init lr_max lr_min
max_epoch warmup_epochs opt beta1 beta2 weight_decay no_weight_decay_filter gc_flag loss_scale use_label_smooth
label_smooth_factor mixup autoaugment loss_name save_checkpoint save_checkpoint_epochs keep_checkpoint_max
save_checkpoint_path open_profiler context_mode device_target amp_level run_distribute""".split()

# Further keys the training package relies on.
NEW_KEYS = """load_path eps momentum cutmix mixup_prob mixup_switch_prob randaugment reprob hflip crop_pct
device_id drop_path_rate clip_grad model_ema model_ema_decay seed resume checkpoint_file_path dataset_sink_mode
log_interval dataset_fraction export_format file_name export_batch_size""".split()


def _write(tmp_path, text, name="c.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_schema_has_every_key_with_type_default_and_help():
    for name in LEGACY_KEYS + NEW_KEYS:
        assert name in SCHEMA, name
    for key in SCHEMA.values():
        assert key.kind in ("str", "path", "int", "float", "bool", "auto_bool", "dict"), key.name
        assert key.help and len(key.help) > 10, key.name
        assert key.group, key.name


def test_default_config_file_is_used(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default is found relative to the repository, not the cwd
    config = load_config([])
    assert config.config_path.endswith(DEFAULT_CONFIG)
    assert config.backbone == "soft_tiny"
    assert config.device_target == "GPU"
    assert config.enable_modelarts is False and config.run_distribute == "auto"
    assert config.context_mode == "graph"


def test_cli_overrides_beat_yaml_and_defaults(tmp_path):
    path = _write(tmp_path, "batch_size: 32\nlr_max: 1e-3\nbackbone: soft_small\n")
    config = load_config(["--config_path", path, "--batch_size", "64", "--lr_max=0.002", "--eval_offset", "-1",
                          "--device_target", "gpu", "--amp-level", "o2", "--randaugment", ""])
    assert config.batch_size == 64 and isinstance(config.batch_size, int)
    assert config.lr_max == pytest.approx(0.002) and isinstance(config.lr_max, float)
    assert config.backbone == "soft_small"  # from the YAML file
    assert config.eval_offset == -1
    assert config.device_target == "GPU" and config.amp_level == "O2"
    assert config.crop_min == SCHEMA["crop_min"].default  # untouched default
    assert {"batch_size", "lr_max", "backbone"} <= config.explicit_keys


def test_yaml_float_written_without_dot_is_a_number(tmp_path):
    # PyYAML reads "1e-3" as a string; the schema turns it into a float
    config = load_config(["--config_path", _write(tmp_path, "lr_max: 1e-3\nlr_min: 5e-5\n")])
    assert config.lr_max == pytest.approx(1e-3) and config.lr_min == pytest.approx(5e-5)


def test_unknown_key_in_yaml_names_closest(tmp_path):
    path = _write(tmp_path, "bach_size: 32\n")
    with pytest.raises(ConfigError) as err:
        load_config(["--config_path", path])
    message = str(err.value)
    assert "unknown config key 'bach_size'; did you mean 'batch_size'?" in message
    assert path in message


def test_unknown_key_on_command_line_names_closest(tmp_path):
    path = _write(tmp_path, "batch_size: 32\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'lr_mx'; did you mean 'lr_max'\?"):
        load_config(["--config_path", path, "--lr_mx", "0.1"])
    with pytest.raises(ValueError, match="did you mean 'eval_batch_size'"):  # ConfigError is a ValueError
        load_config(["--config_path", path, "--eval_bach_size", "8"])


@pytest.mark.parametrize("argv, words", [
    (["--batch_size", "abc"], ["'batch_size'", "integer", "'abc'"]),
    (["--batch_size", "1.5"], ["'batch_size'", "integer"]),
    (["--lr_max", "fast"], ["'lr_max'", "number"]),
    (["--run_distribute", "maybe"], ["'run_distribute'", "boolean"]),
    (["--device_target", "TPU"], ["'device_target'", "'CPU'", "'GPU'", "'Ascend'"]),
    (["--context_mode", "eager"], ["'context_mode'", "'graph'", "'pynative'"]),
    (["--batch_size", "0"], ["'batch_size'", "> 0"]),
    (["--crop_min", "1.5"], ["'crop_min'"]),
    (["--train_image_size", "100"], ["'train_image_size'", "multiple of 32"]),
    (["--dataset_fraction", "0"], ["'dataset_fraction'"]),
])
def test_wrong_type_or_value_names_key_and_expectation(tmp_path, argv, words):
    path = _write(tmp_path, "batch_size: 32\n")
    with pytest.raises(ConfigError) as err:
        load_config(["--config_path", path] + argv)
    for word in words:
        assert word in str(err.value)


def test_wrong_type_in_yaml(tmp_path):
    path = _write(tmp_path, "eval_batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'eval_batch_size' expects an integer.*" + path.replace("\\", ".")):
        load_config(["--config_path", path])
    with pytest.raises(ConfigError, match="'use_label_smooth' expects a boolean"):
        load_config(["--config_path", _write(tmp_path, "use_label_smooth: 2\n", "d.yml")])


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("1", True), ("0", False),
                                            ("True", True), ("FALSE", False), ("yes", True), ("off", False)])
def test_boolean_forms_on_command_line(tmp_path, text, expected):
    path = _write(tmp_path, "batch_size: 32\n")
    assert load_config(["--config_path", path, "--model_ema", text]).model_ema is expected


@pytest.mark.parametrize("text, expected", [("1", True), ("0", False), ("true", True), ("false", False),
                                            ("'1'", True), ("no", False)])
def test_boolean_forms_in_yaml(tmp_path, text, expected):
    path = _write(tmp_path, f"enable_modelarts: {text}\n")
    assert load_config(["--config_path", path]).enable_modelarts is expected


def test_bare_boolean_flag_means_true(tmp_path):
    path = _write(tmp_path, "batch_size: 32\n")
    config = load_config(["--config_path", path, "--run_distribute", "--batch_size", "8"])
    assert config.run_distribute is True and config.batch_size == 8
    with pytest.raises(ConfigError, match="--batch_size needs a value"):
        load_config(["--config_path", path, "--batch_size"])


def test_original_port_style_config_still_loads(tmp_path):
    text = """
enable_modelarts: 0
data_url: ""
checkpoint_url:
dataset_path: '/data/imagenet/train'
interpolation: 'BILINEAR'
soft_config_path: 'models.softmax_free_vision_transformer.SOFTConfig'
lr_min: 0.00005
gc_flag: 0
autoaugment: 1
save_checkpoint: 1
context_mode: 0
device_target: "Ascend"
amp_level: "O3"
run_distribute: 1
file_format: 'AIR'
"""
    config = load_config(["--config_path", _write(tmp_path, text), "--device_num", "8"])
    assert config.context_mode == "graph" and config.interpolation == "bilinear"
    assert config.checkpoint_url == "" and config.autoaugment is True and config.gc_flag is False
    assert config.export_format == "AIR" and config.file_format == "AIR"
    assert config.eval_path == "/data/imagenet/val"  # sibling of the training folder
    assert config.device_num == 8
    assert "soft_config_path" not in config.to_dict()  # accepted and ignored
    assert load_config(["--config_path", _write(tmp_path, "context_mode: 1\n", "p.yml")]).context_mode == "pynative"


def test_derived_eval_path(tmp_path):
    path = _write(tmp_path, "dataset_path: /data/set\n")
    config = load_config(["--config_path", path])
    assert config.eval_path == os.path.join("/data/set", "val")
    assert config.train_path == os.path.join("/data/set", "train")
    assert config.to_dict()["eval_path"] == os.path.join("/data/set", "val")
    assert load_config(["--config_path", path, "--eval_path", "/other/val"]).eval_path == "/other/val"
    assert make_config().eval_path == "" and make_config().train_path == ""


def test_paths_expand_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFT_TEST_DATA", "/mnt/data")
    config = load_config(["--config_path", _write(tmp_path, "dataset_path: $SOFT_TEST_DATA/imagenet\n")])
    assert config.dataset_path == "/mnt/data/imagenet"


def test_augmentation_choices_are_checked(tmp_path):
    path = _write(tmp_path, "autoaugment: 1\n")
    with pytest.raises(ConfigError, match="autoaugment and randaugment"):
        load_config(["--config_path", path, "--randaugment", "rand-m9-mstd0.5-inc1"])
    assert load_config(["--config_path", path, "--autoaugment", "0", "--randaugment",
                        "rand-m9-mstd0.5-inc1"]).randaugment == "rand-m9-mstd0.5-inc1"
    with pytest.raises(ConfigError, match="'randaugment'.*'x9'"):
        load_config(["--config_path", path, "--autoaugment", "0", "--randaugment", "rand-x9"])
    with pytest.raises(ConfigError, match="must start with 'rand'"):
        load_config(["--config_path", path, "--autoaugment", "0", "--randaugment", "v0"])


def test_unknown_backbone_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(["--config_path", _write(tmp_path, "backbone: soft_tine\n")])
    message = str(err.value)
    assert "did you mean 'soft_tiny'" in message.lower() and "SwiftFormer_L3" in message


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, key in SCHEMA.items():
        assert f"--{name} " in out
        assert key.help[:40] in out.replace("\n        ", " ")
    assert out.strip() == format_help().strip()


def test_command_line_errors(tmp_path):
    path = _write(tmp_path, "batch_size: 32\n")
    with pytest.raises(ConfigError, match="unexpected command-line argument 'stray'"):
        load_config(["--config_path", path, "stray"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["--config_path", str(tmp_path / "missing.yml")])
    with pytest.raises(ConfigError, match="mapping"):
        load_config(["--config_path", _write(tmp_path, "- 1\n- 2\n", "list.yml")])
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(["--config_path", _write(tmp_path, "a: [1, 2\n", "broken.yml")])


def test_a_key_set_twice_and_an_empty_file_are_refused(tmp_path):
    """PyYAML keeps the last of two equal keys silently; here every mapping is checked (model_args too), on the
    command line as well. The original port's extra YAML documents (help texts) may repeat the values' keys."""
    nested = _write(tmp_path, "backbone: soft_tiny\nmodel_args:\n  landmarks: pool\n  landmarks: conv\n", "n.yml")
    with pytest.raises(ConfigError, match=r"sets 'landmarks' twice \(lines 3 and 4\); keep one of them"):
        load_config(["--config_path", nested])
    for value in ("{newton_iters: 20, newton_iters: 6}", "newton_iters=20,newton_iters=6"):
        with pytest.raises(ConfigError, match=r"model_args.*sets 'newton_iters' twice"):
            load_config(["--config_path", _write(tmp_path, "backbone: soft_tiny\n"), "--model_args", value])
    documents = _write(tmp_path, "batch_size: 32\n---\nbatch_size: 'help: per device'\n", "docs.yml")
    assert load_config(["--config_path", documents]).batch_size == 32
    for text in ("", "# nothing yet\n", "{}\n", "---\n"):
        with pytest.raises(ConfigError, match="is empty"):
            load_config(["--config_path", _write(tmp_path, text, "empty.yml")])


def test_config_object_behaviour(tmp_path):
    config = make_config({"batch_size": 16, "dataset_path": "/d"})
    assert isinstance(config, Config) and config.batch_size == 16 and config.dataset_path == "/d"
    with pytest.raises(AttributeError, match="did you mean 'batch_size'"):
        _ = config.bach_size
    assert getattr(config, "no_such_key", 7) == 7 and config.get("batch_size") == 16
    config.batch_size = "32"  # known keys are validated on assignment
    assert config.batch_size == 32
    with pytest.raises(ConfigError):
        config.batch_size = "many"
    config.steps_per_epoch = 10  # run-time attributes are allowed, not exported
    assert config.steps_per_epoch == 10 and "steps_per_epoch" not in config.to_dict()
    copy = config.copy(max_epoch=3)
    assert copy.max_epoch == 3 and config.max_epoch == SCHEMA["max_epoch"].default
    assert list(config.to_dict()) == list(SCHEMA)


def test_to_dict_round_trips_through_yaml(tmp_path):
    config = load_config(["--config_path", os.path.join(REPO_ROOT, "config", "soft_tiny.yml"),
                          "--dataset_path", "/data/x"])
    dumped = tmp_path / "dump.yml"
    config.dump(str(dumped))
    again = load_config(["--config_path", str(dumped)])
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[os.path.basename(p) for p in CONFIG_FILES])
def test_every_config_file_validates(path):
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    for name in raw:
        assert name in SCHEMA or name in KEY_ALIASES or name in IGNORED_KEYS, f"{path}: {name}"
    config = load_config(["--config_path", path])
    assert config.backbone in list_models()
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.startswith(("soft_", "swiftformer_")):  # one file per model, named after it
        assert config.backbone.lower() == stem
        assert config.class_num == 1000 and config.train_image_size == 224
        assert config.lr_max > 0 and config.max_epoch == 300


def test_every_backbone_has_a_recipe():
    stems = {os.path.splitext(os.path.basename(p))[0] for p in CONFIG_FILES}
    assert {b.lower() for b in list_models()} <= stems
    assert {"SOFT_config", "SOFT_eval", "SOFT_export", "SOFT_tiny_cloud_graph_ascend_O3"} <= stems


def test_published_recipes():
    tiny = load_config(["--config_path", os.path.join(REPO_ROOT, "config", "soft_tiny.yml")])
    assert (tiny.lr_max, tiny.lr_min, tiny.warmup_epochs, tiny.batch_size, tiny.clip_grad) == (1e-3, 5e-5, 10, 128, 1.0)
    assert tiny.randaugment == "rand-m9-mstd0.5-inc1" and tiny.mixup == 0.8 and tiny.cutmix == 1.0
    medium = load_config(["--config_path", os.path.join(REPO_ROOT, "config", "soft_medium.yml")])
    assert (medium.lr_max, medium.batch_size) == (3.5e-4, 32)
    xs = load_config(["--config_path", os.path.join(REPO_ROOT, "config", "swiftformer_xs.yml")])
    assert (xs.lr_max, xs.weight_decay, xs.mixup, xs.randaugment) == (2e-3, 0.025, 0.0, "")
    cloud = load_config(["--config_path", os.path.join(REPO_ROOT, "config", "SOFT_tiny_cloud_graph_ascend_O3.yml")])
    assert cloud.enable_modelarts is True and cloud.amp_level == "O3" and cloud.device_target == "Ascend"


def test_model_args_mapping_and_the_old_flat_key(tmp_path):
    from src.builder import model_options

    yaml_config = load_config(["--config_path", _write(tmp_path, "model_args: {newton_iters: 10, landmarks: pool}\n")])
    assert yaml_config.model_args == {"newton_iters": 10, "landmarks": "pool"}
    cli = load_config(["--config_path", _write(tmp_path, "backbone: soft_tiny\n", "b.yml"),
                       "--model_args", "depths=[1,1,2,1],landmarks=pool"])
    assert cli.model_args == {"depths": [1, 1, 2, 1], "landmarks": "pool"}
    json_form = load_config(["--config_path", _write(tmp_path, "backbone: soft_tiny\n", "j.yml"),
                             "--model_args", '{"newton_iters": 5}'])
    assert json_form.model_args == {"newton_iters": 5}
    flat = make_config({"newton_iters": 12})
    assert model_options(flat) == {"newton_iters": 12}
    both = make_config({"newton_iters": 12, "model_args": {"newton_iters": 7}})
    assert model_options(both) == {"newton_iters": 7}  # the mapping wins
    assert model_options(make_config({})) == {}
    with pytest.raises(ConfigError, match="model_args"):
        make_config({"model_args": "depths"})


def test_model_args_that_do_not_fit_the_backbone_are_one_sentence():
    from src.builder import build_network

    with pytest.raises(ValueError, match="model_args .* do not fit SwiftFormer_XS"):
        build_network(make_config({"backbone": "SwiftFormer_XS", "model_args": {"newton_iters": 5}}))


def test_every_documented_key_is_read_by_the_code():
    """No key in --help that the code ignores (old ignored keys are listed apart, as such)."""
    import re

    sources = [os.path.join(REPO_ROOT, f) for f in ("train.py", "eval.py", "export.py", "infer.py", "eval_onnx.py")]
    sources += glob.glob(os.path.join(REPO_ROOT, "src", "**", "*.py"), recursive=True)
    text = ""
    for path in sources:
        if os.path.isfile(path):
            body = open(path, encoding="utf-8").read()
            if path.endswith(os.path.join("model_utils", "config.py")):
                body = body[body.index("SCHEMA = OrderedDict()"):]
            text += body
    unread = [k for k in SCHEMA if not re.search(rf"\bconfig\.{k}\b(?!\s*=[^=])|\"{k}\"", text)]
    assert not unread, f"documented but never read: {unread}"
    help_text = format_help()
    for name in IGNORED_KEYS:
        assert f"Accepted and ignored: {name}" in help_text


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("AUTO", "auto"), ("1", True), ("0", False),
                                            ("true", True), ("off", False)])
def test_run_distribute_is_auto_or_a_boolean(tmp_path, text, expected):
    path = _write(tmp_path, f"run_distribute: {text}\n")
    assert load_config(["--config_path", path]).run_distribute == expected
    assert load_config(["--config_path", _write(tmp_path, "batch_size: 8\n", "d.yml")]).run_distribute == "auto"


def test_every_shipped_config_leaves_distribution_to_the_launcher():
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "config", "*.yml"))):
        assert load_config(["--config_path", path]).run_distribute in ("auto", False), path


def test_unset_environment_variable_in_a_path_is_one_sentence_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_PATH", raising=False)
    config = load_config(["--config_path", "config/soft_tiny.yml"])
    assert config.raw("dataset_path") == "$DATA_PATH/imagenet"
    for key in ("dataset_path", "eval_path", "train_path"):
        with pytest.raises(ConfigError) as err:
            getattr(config, key)
        message = str(err.value)
        assert "DATA_PATH" in message and "'dataset_path'" in message and "soft_tiny.yml" in message
        assert "--dataset_path" in message and "\n" not in message
    assert config.to_dict()["dataset_path"] == "$DATA_PATH/imagenet"  # the log of the arguments still works
    given = load_config(["--config_path", "config/soft_tiny.yml", "--dataset_path", str(tmp_path)])
    assert given.dataset_path == str(tmp_path) and given.eval_path == str(tmp_path / "val")
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    config = load_config(["--config_path", "config/soft_tiny.yml"])
    assert config.dataset_path == str(tmp_path / "imagenet") and config.eval_path == str(tmp_path / "imagenet" / "val")


def test_command_line_keys_are_told_apart_from_the_file(tmp_path):
    path = _write(tmp_path, "crop_pct: 0.9\nbatch_size: 8\n")
    config = load_config(["--config_path", path, "--batch_size", "16"])
    assert config.command_line_keys == {"batch_size"}
    assert {"crop_pct", "batch_size"} <= config.explicit_keys
