"""The one-time inference pass: ``fuse_for_inference(net)``.

Training and plain evaluation run the model as written (its ``construct`` reads like the paper). For
inference the pass rewrites a built, weight-loaded network once, in place: every cell that defines a
``reparameterize()`` method (BatchNorm folded into the convolution next to it, an attention evaluated
in a re-associated order, ...) replaces its own sub-cells and parameters by the faster equivalent. The
outputs stay those of the unfused network (float32 rounding aside, <= 1e-6 relative; tested per
family). BatchNorm folding and the re-associations are plain MindSpore, so the pass is the same on every device;
on a network the CPU speed layer rewrote (``models.cpu``), the new cells get its kernels too. The network is left in evaluation mode and can no longer be trained: this is what eval.py,
infer.py, export.py and the benchmarks run, never train.py.

    >>> net = create_model("SwiftFormer_XS", pretrained="swiftformer_xs.ckpt")
    >>> fuse_for_inference(net)          # returns net
"""
from .cpu_switch import is_accelerated

__all__ = ["fuse_for_inference", "inference_rewrites", "is_fused"]


def fuse_for_inference(net):
    """Apply every cell's ``reparameterize()`` once (children before their parents); returns ``net``.

    Call it before the network's first graph-mode call: MindSpore keeps running a graph it compiled, so a
    network that already ran would not change (RuntimeError then).
    """
    net.set_train(False)
    if is_fused(net):
        return net
    if any(getattr(cell, "compile_cache", None) for _, cell in net.cells_and_names()):
        raise RuntimeError("fuse_for_inference(net) must run before the network's first graph-mode call "
                           "(MindSpore keeps the graph it compiled); build the network again and fuse it first.")
    for cell in reversed(inference_rewrites(net)):  # children before their parents
        cell.reparameterize()
    if is_accelerated(net):  # the CPU layer rewrites the cells the pass created
        from .cpu import accelerate
        accelerate(net)
    net.fused_for_inference = True
    net.set_train(False)
    return net


def inference_rewrites(net):
    """The cells of ``net`` that define ``reparameterize()``, parents before children (empty: the pass
    changes nothing, as for SOFT)."""
    return [cell for _, cell in net.cells_and_names() if callable(getattr(cell, "reparameterize", None))]


def is_fused(net):
    """Whether ``fuse_for_inference`` was applied to ``net``."""
    return bool(getattr(net, "fused_for_inference", False))
