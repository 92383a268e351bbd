"""Export a trained checkpoint for MindSpore Lite / serving / other runtimes.

    python export.py --config_path config/SOFT_export.yml --ckpt_file soft_tiny.ckpt
    python export.py --config_path config/SOFT_export.yml --ckpt_file soft_tiny.ckpt \
        --file_name soft_tiny_dyn --file_format MINDIR --batch_size -1

The keys are the model zoo's (and the original port's); the longer names used elsewhere in this
repository are accepted too (any config key can be overridden with ``--key value``):

* ``ckpt_file`` (= ``checkpoint_file_path``; else ``pretrained``, the original port's SOFT_export.yml): the
  checkpoint; it must fit the model (optimizer state and training metadata are skipped). A checkpoint of
  train.py exports the weights its accuracy came from (EMA or not) at the evaluation size it was measured at
  (``src/checkpoint_settings.py``; ``--model_ema`` / ``--eval_image_size`` on the command line win);
* ``file_name``: the output name without extension (default: the backbone name); a relative name is
  put in ``output_path`` when that is set, else in the current folder;
* ``file_format`` (= ``export_format``): MINDIR (default), ONNX, or AIR (Ascend only);
* ``batch_size``: the batch dimension of the exported input, or -1 for a dynamic batch (MINDIR only).
  In export.py it means the EXPORTED batch, as in the zoo's export configs: ``export_batch_size``
  when given (config file or command line), else ``batch_size`` when given, else 1. (A training config
  used for export therefore exports its training batch unless ``--batch_size`` is given.) For a
  dynamic batch in a YAML file write ``export_batch_size: -1`` (``batch_size`` there is also the
  training batch, which must be positive);
* ``device_target`` / ``device_id``: where the network is built (CPU exports MINDIR and ONNX);
* ``eval_image_size``: the input height and width (a multiple of 32).

The input is float32 [batch, 3, eval_image_size, eval_image_size], normalised like the evaluation
pipeline (ImageNet mean / std); the output is the logits [batch, class_num] (SwiftFormer: the mean of
its two heads). The class names (``<checkpoint>.classes.json``, else the names stored in a training
checkpoint) are written next to the exported file as ``<file>.classes.json``, and the evaluation
preprocessing (size, crop_pct, interpolation) as ``<file>.eval_config.json``, for infer.py / eval_onnx.py.

Exit status 0 on success, 1 with one ``ERROR:`` line for a mistake (config, checkpoint, format).
"""
import os
import shutil
import sys

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(ValueError):
    """A request that cannot be exported as asked (format, device, batch size)."""


def exported_batch(config):
    """The batch dimension to export (-1: dynamic): ``export_batch_size`` when the user set it, else
    ``batch_size`` when the user set it (the zoo's spelling), else ``export_batch_size``'s default, 1."""
    if "export_batch_size" not in config.explicit_keys and "batch_size" in config.explicit_keys:
        return int(config.batch_size)
    return int(config.export_batch_size)


def check_request(config):
    """Validate format / device / batch size before any work; returns (format, batch or -1, image size)."""
    fmt = str(config.export_format).upper()
    if fmt not in EXTENSIONS:
        raise ExportError(f"file_format must be MINDIR, ONNX or AIR, got {config.export_format!r}.")
    if fmt == "AIR" and str(config.device_target) != "Ascend":
        raise ExportError(f"AIR export needs an Ascend device (device_target is {config.device_target}): "
                          "export MINDIR (--file_format MINDIR) or ONNX here, or run with "
                          "--device_target Ascend on an Ascend machine.")
    batch = exported_batch(config)
    if batch == 0 or batch < -1:
        raise ExportError(f"batch_size must be a positive batch size or -1 (dynamic batch), got {batch}.")
    if batch == -1 and fmt != "MINDIR":
        raise ExportError(f"a dynamic batch (--batch_size -1) is supported for MINDIR export only; "
                          f"give {fmt} a fixed --batch_size.")
    return fmt, batch, int(config.eval_image_size)


def output_base(config, fmt):
    """The output path without extension (its folder is created)."""
    name = str(config.file_name or config.backbone)
    ext = EXTENSIONS[fmt]
    if name.lower().endswith(ext):
        name = name[:-len(ext)]
    if not os.path.isabs(name) and config.output_path:
        name = os.path.join(str(config.output_path), name)
    name = os.path.abspath(name)
    os.makedirs(os.path.dirname(name), exist_ok=True)
    return name


def export_network(net, fmt, batch, image_size, base):
    """Prepare ``net`` for ``fmt`` and write ``base`` + extension; returns the written path."""
    import mindspore as ms
    import numpy as np

    from models.export_utils import prepare_for_export

    prepare_for_export(net, fmt)
    if batch == -1:
        inputs = ms.Tensor(shape=[None, 3, image_size, image_size], dtype=ms.float32)
    else:
        inputs = ms.Tensor(np.zeros((batch, 3, image_size, image_size), np.float32))
    path = base + EXTENSIONS[fmt]
    try:
        ms.export(net, inputs, file_name=base, file_format=fmt)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if fmt == "ONNX" and ("convert map" in first or "not support" in first):
            raise ExportError(f"ONNX export of {type(net).__name__} failed: {first} "
                              "MINDIR export supports every model (--file_format MINDIR).") from None
        raise
    if not os.path.isfile(path):
        raise ExportError(f"MindSpore reported no error but wrote no {path}")
    return path


def _copy_class_names(config, ckpt, meta, exported):
    from models.export_utils import class_names_path, read_class_names, write_class_names

    names = read_class_names(ckpt)
    source = class_names_path(ckpt)
    if names is None and meta.get("class_names"):
        names, source = list(meta["class_names"]), "the checkpoint's metadata"
    if names is None:
        print("No class names found (no <checkpoint>.classes.json, none in the checkpoint): infer.py will "
              "show class indices.", flush=True)
        return None
    if len(names) != int(config.class_num):
        print(f"WARNING: {len(names)} class names in {source} but class_num is {config.class_num}; "
              "not copied.", file=sys.stderr, flush=True)
        return None
    if source == class_names_path(ckpt):
        shutil.copyfile(source, class_names_path(exported))
        return class_names_path(exported)
    return write_class_names(exported, names)


def run_export(config):
    """Export ``config.ckpt_file`` as ``config.file_format``; returns the written path."""
    from src.checkpoint_settings import apply_checkpoint_settings, inference_checkpoint, write_eval_config

    check_request(config)  # a wrong request costs nothing
    ckpt = inference_checkpoint(config)
    if not ckpt:
        raise ExportError("Set --ckpt_file (or --checkpoint_file_path, or the original port's --pretrained) to the "
                          "checkpoint to export.")
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"Checkpoint file not found: {ckpt}")
    apply_checkpoint_settings(config)
    fmt, batch, size = check_request(config)

    import mindspore as ms

    target = str(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE, device_target=target)
    if target != "CPU":
        ms.set_context(device_id=int(config.device_id))

    from src.builder import build_network

    net, meta = build_network(config, "export", checkpoint=ckpt)
    base = output_base(config, fmt)
    path = export_network(net, fmt, batch, size, base)
    shape = ["-1" if batch == -1 else str(batch), "3", str(size), str(size)]
    print(f"exported {config.backbone} ({ckpt}) to {path}: {fmt}, input float32 [{', '.join(shape)}]"
          f"{' (dynamic batch)' if batch == -1 else ''}, output logits [{shape[0]}, {config.class_num}]",
          flush=True)
    sidecar = _copy_class_names(config, ckpt, meta, path)
    if sidecar:
        print(f"class names: {sidecar}", flush=True)
    print(f"evaluation preprocessing: {write_eval_config(path, config)}", flush=True)
    return path


def zoo_command_line(argv):
    """``argv`` with ``--batch_size`` spelled ``--export_batch_size``: on export.py's command line it is
    the exported batch (the zoo's ``--batch_size -1`` must not meet the training batch's check)."""
    renamed = []
    for token in argv:
        name, sep, value = str(token).partition("=")
        if name in ("--batch_size", "--batch-size"):
            token = "--export_batch_size" + sep + value
        renamed.append(token)
    return renamed


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job

    return run_job(run_export, zoo_command_line(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
