"""Convert an original PyTorch SOFT / SwiftFormer checkpoint, or a checkpoint of the original MindSpore port
of SOFT, into a MindSpore checkpoint of this project.

    python tools/convert_torch_checkpoint.py --arch soft_tiny --src SOFT_Tiny.pth --dst soft_tiny.ckpt
    python tools/convert_torch_checkpoint.py --arch soft_tiny --src port_soft_tiny.ckpt --dst soft_tiny.ckpt

``--src``: a ``.pth`` / ``.pt`` / ``.pth.tar`` written by torch.save (read without PyTorch; nothing the file
names is executed), an ``.npz`` of arrays by PyTorch name, or a ``.ckpt`` of the original MindSpore port
(fudan-zvg/SOFT_MindSpore_Ascend; its parameter names, optimizer state dropped). Exit status 0, or 2 with one
``error:`` line (a file that does not map completely onto ``--arch`` is refused unless ``--allow-partial``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import list_models  # noqa: E402
from src.torch_checkpoint import convert_file  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help=f"model name, one of: {', '.join(list_models())}")
    parser.add_argument("--src", required=True,
                        help="PyTorch checkpoint (.pth/.pt/.pth.tar or .npz), or the original MindSpore port's .ckpt")
    parser.add_argument("--dst", required=True, help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="head size (default: taken from the checkpoint's head)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="write the checkpoint even if some entries are unused or parameters unfilled")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        report = convert_file(args.arch, args.src, args.dst, num_classes=args.num_classes,
                              allow_partial=args.allow_partial)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # user mistakes: one clear message
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.overrides:
        args_text = ", ".join(f"{k}={v!r}" for k, v in report.overrides.items())
        print(f"load it with create_model({args.arch!r}, {args_text}, pretrained={args.dst!r})")
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
