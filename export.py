"""Export a trained checkpoint for MindSpore Lite / serving / other runtimes.

    python export.py --config_path config/SOFT_export.yml --checkpoint_file_path soft_tiny.ckpt
    python export.py --config_path config/SOFT_export.yml --checkpoint_file_path soft_tiny.ckpt \
        --export_format ONNX --export_batch_size 1 --file_name soft_tiny_b1

Keys (any config key can be overridden with ``--key value``):

* ``export_format``: MINDIR (default), ONNX, or AIR (Ascend only);
* ``export_batch_size``: the batch dimension of the input, or -1 for a dynamic batch (MINDIR only);
* ``eval_image_size``: the input height and width (a multiple of 32);
* ``file_name``: the output name without extension (default: the backbone name); a relative name is
  put in ``output_path`` when that is set, else in the current folder;
* ``checkpoint_file_path``: the checkpoint; it must fit the model (optimizer state and training
  metadata are skipped; with ``model_ema`` the EMA weights are exported).

The input is float32 [batch, 3, eval_image_size, eval_image_size], normalised like the evaluation
pipeline (ImageNet mean / std); the output is the logits [batch, class_num] (SwiftFormer: the mean of
its two heads). The class names (``<checkpoint>.classes.json``, else the names stored in a training
checkpoint) are written next to the exported file as ``<file>.classes.json`` for infer.py.

Exit status 0 on success, 1 with one ``ERROR:`` line for a mistake (config, checkpoint, format).
"""
import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import shutil  # noqa: E402
import sys  # noqa: E402

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(ValueError):
    """A request that cannot be exported as asked (format, device, batch size)."""


def check_request(config):
    """Validate format / device / batch size before any work; returns (format, batch or -1, image size)."""
    fmt = str(config.export_format).upper()
    if fmt not in EXTENSIONS:
        raise ExportError(f"export_format must be MINDIR, ONNX or AIR, got {config.export_format!r}.")
    if fmt == "AIR" and str(config.device_target) != "Ascend":
        raise ExportError(f"AIR export needs an Ascend device (device_target is {config.device_target}): "
                          "export MINDIR (--export_format MINDIR) or ONNX here, or run with "
                          "--device_target Ascend on an Ascend machine.")
    batch = int(config.export_batch_size)
    if batch == 0 or batch < -1:
        raise ExportError(f"export_batch_size must be a positive batch size or -1 (dynamic batch), got {batch}.")
    if batch == -1 and fmt != "MINDIR":
        raise ExportError(f"a dynamic batch (--export_batch_size -1) is supported for MINDIR export only; "
                          f"give {fmt} a fixed --export_batch_size.")
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


def build_network(config):
    """The backbone of the config, in evaluation mode, without weights."""
    from models import create_model, model_family

    name = str(config.backbone)
    overrides = {}
    family = model_family(name)
    if hasattr(family, "fused_kernels_available"):  # SwiftFormer: no machine-specific Custom operators
        overrides["fused_kernels"] = False
    if name.startswith("soft") and int(config.newton_iters) != 20:
        overrides["newton_iters"] = int(config.newton_iters)
    net = create_model(name, num_classes=int(config.class_num), **overrides)
    net.set_train(False)
    return net


def load_weights(net, path, use_ema=False):
    """Load ``path`` strictly into ``net``; returns the checkpoint's metadata (may hold class_names)."""
    from src.trainer import load_network_checkpoint

    if not path:
        raise ExportError("Set --checkpoint_file_path to the checkpoint to export.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    return load_network_checkpoint(net, path, use_ema=use_ema)


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
                              "MINDIR export supports every model (--export_format MINDIR).") from None
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
    """Export ``config.checkpoint_file_path`` as ``config.export_format``; returns the written path."""
    fmt, batch, size = check_request(config)
    ckpt = str(config.checkpoint_file_path or "")
    if not ckpt:
        raise ExportError("Set --checkpoint_file_path to the checkpoint to export.")
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"Checkpoint file not found: {ckpt}")

    import mindspore as ms

    target = str(config.device_target)
    ms.set_context(mode=ms.GRAPH_MODE, device_target=target)
    if target != "CPU":
        ms.set_context(device_id=int(config.device_id))

    net = build_network(config)
    meta = load_weights(net, ckpt, use_ema=bool(config.model_ema))
    base = output_base(config, fmt)
    path = export_network(net, fmt, batch, size, base)
    shape = ["-1" if batch == -1 else str(batch), "3", str(size), str(size)]
    print(f"exported {config.backbone} ({ckpt}) to {path}: {fmt}, input float32 [{', '.join(shape)}]"
          f"{' (dynamic batch)' if batch == -1 else ''}, output logits [{shape[0]}, {config.class_num}]",
          flush=True)
    sidecar = _copy_class_names(config, ckpt, meta, path)
    if sidecar:
        print(f"class names: {sidecar}", flush=True)
    return path


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job

    return run_job(run_export, argv)


if __name__ == "__main__":
    sys.exit(main())
