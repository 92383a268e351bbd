"""Classify images with a checkpoint or an exported MINDIR and print the top-k classes.

    python infer.py --config_path config/SOFT_tiny_demo_cpu.yml --checkpoint output/demo/best.ckpt img1.png photos/
    python infer.py --config_path config/SOFT_export.yml --mindir soft_tiny.mindir cat.jpg --topk 3

Arguments: image files and folders (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp/
.ppm/.pgm), ``--checkpoint FILE`` (default: the config's checkpoint_file_path) or ``--mindir FILE``,
``--topk K`` (default 5), and any config key as ``--key value`` (a key takes the next argument as its
value; give images after the keys or use ``--key=value``).

Preprocessing is the evaluation pipeline's (src/dataset.py): decode to RGB (grayscale, CMYK, 16-bit,
palette images included), resize the short side to int(eval_image_size / crop_pct) with the
evaluation interpolation, centre-crop eval_image_size, normalise with the ImageNet mean / std. With a
MINDIR the input size is read from the file. A checkpoint of train.py brings the weights (EMA or not) and
the preprocessing its accuracy was measured with, a MINDIR the preprocessing export.py recorded next to it
(``<file>.eval_config.json``); a key given on the command line wins (src/checkpoint_settings.py; the lines
saying which settings are used go to stderr).

Class names, first found: ``<model file>.classes.json`` (a JSON list, written by export.py next to an
exported file), the names stored in a training checkpoint, the class folders of
``<dataset_path>/train``, else the class indices.

Output per image::

    photos/cat.jpg
      1. tabby (3)  0.912345
      2. tiger (7)  0.051234

An unreadable image gives ``ERROR: cannot read image PATH (reason)`` on stderr and the others are still
classified and printed. Exit status: 0 when every image was classified; 1 when any could not be read
(closing line ``ERROR: N of M image(s) could not be read``), when none was classified, or for a usage /
config / model mistake (one ``ERROR:`` line).
"""
import os
import sys
import traceback

USAGE = ("usage: python infer.py --config_path CONFIG (--checkpoint FILE | --mindir FILE) [--topk K] "
         "[--KEY VALUE ...] IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...]")
_OWN_OPTIONS = ("checkpoint", "mindir", "topk")
_CHUNK = 8  # images per forward pass for checkpoints and dynamic-batch MINDIRs


class UsageError(ValueError):
    """Wrong command-line arguments."""


def parse_args(argv):
    """``argv`` -> (own options dict, config argv list, image arguments)."""
    own = {"checkpoint": None, "mindir": None, "topk": "5"}
    config_args, images = [], []
    i = 0
    while i < len(argv):
        token = str(argv[i])
        if token in ("-h", "--help"):
            print(USAGE)
            print(__doc__)
            raise SystemExit(0)
        if token.startswith("--") and len(token) > 2:
            name, has_value, value = token[2:].partition("=")
            key = name.replace("-", "_")
            if key in _OWN_OPTIONS:
                if not has_value:
                    if i + 1 >= len(argv):
                        raise UsageError(f"--{name} needs a value")
                    i += 1
                    value = str(argv[i])
                own[key] = value
            else:
                config_args.append(token)
                if not has_value and i + 1 < len(argv) and not str(argv[i + 1]).startswith("--"):
                    i += 1
                    config_args.append(str(argv[i]))
        else:
            images.append(token)
        i += 1
    try:
        own["topk"] = int(own["topk"])
    except ValueError:
        raise UsageError(f"--topk must be a positive integer, got {own['topk']!r}") from None
    if own["topk"] < 1:
        raise UsageError(f"--topk must be a positive integer, got {own['topk']}")
    if own["checkpoint"] and own["mindir"]:
        raise UsageError("give either --checkpoint or --mindir, not both")
    if not images:
        raise UsageError("no image or folder given")
    return own, config_args, images


def collect_images(arguments):
    """Image files named by ``arguments`` (folders searched recursively, sorted); missing ones reported."""
    from src.dataset import IMG_EXTENSIONS

    files, missing = [], []
    for arg in arguments:
        if os.path.isdir(arg):
            found = []
            for root, dirs, names in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, n) for n in names
                          if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMG_EXTENSIONS]
            if not found:
                missing.append((arg, "no images in this folder"))
            files += sorted(found)
        elif os.path.isfile(arg):
            files.append(arg)
        else:
            missing.append((arg, "no such file or folder"))
    return files, missing


# ----------------------------------------------------------------------------------------------- model
def mindir_input_shape(path):
    """The first input's dims of a MINDIR file ([-1, 3, H, W] for a dynamic batch), or None if unreadable."""
    try:
        from mindspore.train import mind_ir_pb2
        model = mind_ir_pb2.ModelProto()
        with open(path, "rb") as fh:
            model.ParseFromString(fh.read())
        dims = list(model.graph.input[0].tensor[0].dims)
        return dims if len(dims) == 4 else None
    except Exception:  # pylint: disable=broad-except  (an older / newer layout: fall back to the config)
        return None


def _note(line):
    """Lines about the settings in use go to stderr: stdout holds only the predictions."""
    print(line, file=sys.stderr, flush=True)


class Predictor:
    """Logits for batches of preprocessed images, from a checkpoint or a MINDIR."""

    def __init__(self, config, checkpoint=None, mindir=None):
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE, device_target=str(config.device_target))
        self.meta = {}
        self.batch = None  # fixed batch of the model, None: any
        if mindir:
            if not os.path.isfile(mindir):
                raise FileNotFoundError(f"MINDIR file not found: {mindir}")
            from mindspore import nn
            from src.checkpoint_settings import apply_sidecar_settings
            apply_sidecar_settings(config, mindir, log=_note)
            self.model_path = mindir
            dims = mindir_input_shape(mindir)
            self.image_size = int(dims[2]) if dims and dims[2] > 0 else int(config.eval_image_size)
            self.batch = int(dims[0]) if dims and dims[0] > 0 else None
            try:
                self.net = nn.GraphCell(ms.load(mindir))
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"cannot load MINDIR {mindir}: {str(err).strip().splitlines()[0]}") from None
        else:
            from src.builder import build_network
            from src.checkpoint_settings import apply_checkpoint_settings, inference_checkpoint
            if checkpoint:
                config.checkpoint_file_path = checkpoint
            path = inference_checkpoint(config)
            if not path:
                raise UsageError("give --checkpoint FILE or --mindir FILE (or set checkpoint_file_path)")
            apply_checkpoint_settings(config, log=_note)
            self.model_path = path
            self.net, self.meta = build_network(config, "infer", checkpoint=path)
            self.image_size = int(config.eval_image_size)

    def __call__(self, images):
        """images float32 [n, 3, S, S] -> logits [n, classes] (numpy)."""
        import mindspore as ms
        import numpy as np

        n = images.shape[0]
        chunk = self.batch or min(_CHUNK, n)
        outputs = []
        for start in range(0, n, chunk):
            part = images[start:start + chunk]
            real = part.shape[0]
            if (self.batch or not isinstance(self.net, ms.nn.GraphCell)) and real < chunk:
                # fixed-batch MINDIR, or a network compiled for one batch size: pad with zeros
                part = np.concatenate([part, np.zeros((chunk - real,) + part.shape[1:], part.dtype)])
            out = self.net(ms.Tensor(part))
            if isinstance(out, (tuple, list)):
                out = out[0]
            outputs.append(out.asnumpy()[:real])
        return np.concatenate(outputs).astype(np.float64)


# ----------------------------------------------------------------------------------------------- data
def load_image(path, transform):
    """One image file -> float32 [3, S, S] with the evaluation preprocessing; raises ValueError naming it."""
    from src.dataset import decode_for_eval
    return decode_for_eval(path, transform)


def eval_transform(config):
    """The evaluation pipeline's per-image operations, callable on encoded bytes."""
    from src.dataset import eval_transform as pipeline_eval_transform
    return pipeline_eval_transform(config)


# ----------------------------------------------------------------------------------------------- names
def resolve_class_names(config, model_path, meta, num_classes):
    """(names, where they came from); names is None when only indices can be shown."""
    from models.export_utils import class_names_path, read_class_names

    candidates = []
    try:
        names = read_class_names(model_path)
    except ValueError as err:
        print(f"WARNING: {err}", file=sys.stderr)
        names = None
    if names is not None:
        candidates.append((names, class_names_path(model_path)))
    if meta.get("class_names"):
        candidates.append((list(meta["class_names"]), "the checkpoint"))
    if config.dataset_path:
        try:
            from src.dataset import resolve_train_folder
            folder = resolve_train_folder(config)
            found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
            if found:
                candidates.append((found, folder))
        except (ValueError, OSError):
            pass
    for names, where in candidates:
        if len(names) == num_classes:
            return names, where
        print(f"WARNING: {len(names)} class names in {where}, but the model has {num_classes} classes; "
              "ignoring them", file=sys.stderr)
    return None, "class indices"


def softmax(logits):
    import numpy as np
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_infer(config, own, image_args):
    """Classify the images; returns (number classified, number failed)."""
    import numpy as np

    files, missing = collect_images(image_args)
    failed = 0
    for arg, reason in missing:
        print(f"ERROR: cannot read image {arg} ({reason})", file=sys.stderr, flush=True)
        failed += 1
    predictor = Predictor(config, checkpoint=own["checkpoint"], mindir=own["mindir"])
    if predictor.image_size != int(config.eval_image_size):
        config.eval_image_size = predictor.image_size
    transform = eval_transform(config)

    arrays, kept = [], []
    for path in files:
        try:
            arrays.append(load_image(path, transform))
            kept.append(path)
        except ValueError as err:
            print(f"ERROR: cannot read image {path} ({err})", file=sys.stderr, flush=True)
            failed += 1
    if not kept:
        return 0, failed
    logits = predictor(np.stack(arrays).astype(np.float32))
    probs = softmax(logits)
    names, source = resolve_class_names(config, predictor.model_path, predictor.meta, probs.shape[1])
    print(f"model: {predictor.model_path}; input {predictor.image_size}x{predictor.image_size}; "
          f"class names: {source}", flush=True)
    k = min(own["topk"], probs.shape[1])
    for path, row in zip(kept, probs):
        print(path)
        for rank, idx in enumerate(np.argsort(-row, kind="stable")[:k], start=1):
            label = f"{names[idx]} ({idx})" if names else str(idx)
            print(f"  {rank}. {label}  {row[idx]:.6f}")
    sys.stdout.flush()
    return len(kept), failed


def main(argv=None):
    from src.model_utils.config import ConfigError, load_config

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        own, config_args, images = parse_args(argv)
        config = load_config(config_args)
        done, failed = run_infer(config, own, images)
    except UsageError as err:
        print(f"ERROR: {err}\n{USAGE}", file=sys.stderr, flush=True)
        return 1
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        if os.environ.get("SOFT_DEBUG"):
            traceback.print_exc()
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        return 1
    if not done:
        print(f"ERROR: none of the {failed} image(s) could be classified", file=sys.stderr, flush=True)
        return 1
    if failed:
        print(f"ERROR: {failed} of {done + failed} image(s) could not be read (named above); the other {done} "
              "are classified above", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
