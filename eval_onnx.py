"""Evaluate an ONNX export with onnxruntime on the evaluation set, as eval.py evaluates a checkpoint.

    python export.py --config_path config/SOFT_export.yml --ckpt_file soft_tiny.ckpt --file_format ONNX
    python eval_onnx.py --config_path config/SOFT_eval.yml --dataset_path /data/imagenet \
        --onnx_path soft_tiny.onnx [--device_target CPU|GPU]

The images come from eval.py's pipeline (``src.dataset.create_dataset(config, training=False)``: the
config's eval_path, eval_image_size, crop_pct, interpolation, normalisation and eval_batch_size; the
preprocessing export.py recorded in ``<file>.eval_config.json`` replaces the config file's, a key given on
the command line wins), and
are counted by eval.py's metric (``src.metric.TopKAccuracy``) and printed by its ``src.metric.print_eval_result``,
so the two print the same lines:

    accuracy=0.784420, per step time: 0.0123s, total cost time: 1.2345s
    top5_accuracy=0.990000, images=359

An ONNX file with a fixed batch (export.py writes ONNX with ``--batch_size N``) evaluates any
eval_batch_size: each batch is cut into pieces of N and the last piece is padded with zeros, whose
outputs are discarded. ``--device_target GPU`` runs onnxruntime's CUDAExecutionProvider (the
``onnxruntime-gpu`` package) on GPU ``device_id``; CPU runs the CPUExecutionProvider.

Exit status 0 on success, 1 with one ``ERROR:`` line for a mistake (config, file, device).
"""
import os
import sys
import time

import numpy as np

#: device_target -> the onnxruntime execution provider that runs it
PROVIDERS = {"CPU": "CPUExecutionProvider", "GPU": "CUDAExecutionProvider"}


class OnnxClassifier:
    """An onnxruntime session of an exported classifier: ``logits = classifier(images)``.

    ``images``: float32 [B, 3, H, W] (any B); returns float32 logits [B, num_classes] (several
    outputs, e.g. two heads, are averaged as eval.py averages them).
    """

    def __init__(self, path, device_target="CPU", device_id=0):
        import onnxruntime as ort

        target = str(device_target)
        if target not in PROVIDERS:
            raise ValueError(f"eval_onnx.py runs on CPU or GPU (onnxruntime), not {target}; "
                             "set --device_target CPU or GPU.")
        provider = PROVIDERS[target]
        available = ort.get_available_providers()
        if provider not in available:
            raise ValueError(f"--device_target {target} needs onnxruntime's {provider}, which this onnxruntime "
                             f"({ort.__version__}: {', '.join(available)}) does not have; install onnxruntime-gpu, "
                             "or evaluate with --device_target CPU.")
        if provider == "CPUExecutionProvider":
            providers = [provider]
        else:  # the CPU provider stays listed after CUDA for the operators CUDA does not implement
            providers = [(provider, {"device_id": int(device_id)}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(path, providers=providers)
        except Exception as err:  # onnxruntime's own exception types derive from Exception only
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"onnxruntime cannot load {path}: {first}") from None
        if self.session.get_providers()[0] != provider:
            raise ValueError(f"onnxruntime could not start {provider} for {path} (see its messages above); "
                             "evaluate with --device_target CPU.")
        self.provider = provider
        self.version = ort.__version__
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path} is not an image classifier of export.py: its inputs are "
                             f"{[(i.name, i.shape) for i in inputs]}, not one [batch, 3, height, width] tensor.")
        self.input_name = inputs[0].name
        batch, _, height, width = inputs[0].shape
        #: the fixed batch of the file, or None for a dynamic batch
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None
        self.image_size = (height, width)

    def __call__(self, images):
        if self.batch_size is None:
            return self._logits(images)
        pieces = []
        for start in range(0, images.shape[0], self.batch_size):
            piece = images[start:start + self.batch_size]
            real = piece.shape[0]
            if real < self.batch_size:
                padding = np.zeros((self.batch_size - real,) + piece.shape[1:], piece.dtype)
                piece = np.concatenate([piece, padding])
            pieces.append(self._logits(piece)[:real])
        return np.concatenate(pieces)

    def _logits(self, images):
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(images, np.float32)})
        if len(outputs) == 1:
            return outputs[0]
        return np.mean(np.stack(outputs), axis=0)

    def describe(self):
        batch = "dynamic" if self.batch_size is None else str(self.batch_size)
        return (f"onnxruntime {self.version} ({self.provider}), input [{batch}, 3, {self.image_size[0]}, "
                f"{self.image_size[1]}]")


def _check_class_names(onnx_path, class_names):
    """Warn (as eval.py does for a checkpoint) when the file's class names are not the evaluation set's."""
    from models.export_utils import read_class_names

    saved = read_class_names(onnx_path)
    if saved is not None and list(saved) != list(class_names):
        print(f"WARNING: the model was trained on classes {saved}, the evaluation set has {list(class_names)}; "
              "accuracy compares class indices.", file=sys.stderr)


def run_eval_onnx(config):
    """Evaluate ``config.onnx_path`` on the evaluation set; returns {"top1", "top5", "count", ...}."""
    path = str(config.onnx_path or "")
    if not path:
        raise ValueError("Set --onnx_path to the ONNX file to evaluate (export.py --file_format ONNX writes one).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file not found: {path}")
    from src.checkpoint_settings import apply_sidecar_settings

    apply_sidecar_settings(config, path)
    classifier = OnnxClassifier(path, config.device_target, config.device_id)
    size = int(config.eval_image_size)
    if tuple(classifier.image_size) != (size, size) and all(isinstance(s, int) for s in classifier.image_size):
        raise ValueError(f"{path} takes {classifier.image_size[0]} x {classifier.image_size[1]} images but "
                         f"eval_image_size is {size}; set --eval_image_size {classifier.image_size[0]}.")

    from src.dataset import create_dataset
    from src.metric import TopKAccuracy, print_eval_result

    dataset, class_names = create_dataset(config, training=False)
    _check_class_names(path, class_names)
    print(classifier.describe(), flush=True)
    metric = TopKAccuracy((1, 5))
    start = time.time()
    steps = 0
    for image, label in dataset.create_tuple_iterator(columns=["image", "label"], num_epochs=1, output_numpy=True):
        logits = classifier(image)
        if logits.shape[-1] != int(config.class_num):
            raise ValueError(f"{path} outputs {logits.shape[-1]} classes but class_num is {config.class_num}.")
        metric.update(logits, label)  # label -1 (padding) is not counted
        steps += 1
    result = metric.result()
    result["eval_cost"] = time.time() - start
    result["per_step"] = result["eval_cost"] / max(steps, 1)
    print_eval_result(result)
    return result


def main(argv=None):
    from src.model_utils.moxing_adapter import run_job

    return run_job(run_eval_onnx, argv)


if __name__ == "__main__":
    sys.exit(main())
