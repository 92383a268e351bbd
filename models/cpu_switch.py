"""The one switch of the CPU speed layer (``models.cpu``): the environment variable ``SOFT_CPU_KERNELS``.

* ``auto`` (default): a network built by ``models.create_model`` while the device target is CPU is rewritten by
  ``models.cpu.accelerate``; on GPU and Ascend nothing happens and ``models.cpu`` is never imported;
* ``0`` (or off / false / no): never, on any device: every network is the portable one.

Everything downstream follows the network, not the switch: ``models.fuse_for_inference`` rewrites the cells it
creates only for an accelerated network, and ``src.train_step`` uses the CPU layer's gradient-norm reduction
only for one. This module imports nothing of ``models.cpu``.
"""
import os

__all__ = ["SWITCH", "MARK", "cpu_layer_enabled", "is_accelerated", "accelerate_if_enabled"]

#: the environment variable
SWITCH = "SOFT_CPU_KERNELS"
#: the attribute ``models.cpu.accelerate`` sets on the network it rewrote
MARK = "cpu_accelerated"


def cpu_layer_enabled():
    """Whether the switch applies the CPU layer here: ``auto`` and a CPU device target.

    Raises ValueError for a value other than auto / 0.
    """
    value = os.environ.get(SWITCH, "auto").strip().lower() or "auto"
    if value in ("0", "off", "false", "no"):
        return False
    if value != "auto":
        raise ValueError(f"{SWITCH} must be 'auto' or '0', got {value!r}")
    import mindspore as ms
    return ms.get_context("device_target") == "CPU"


def is_accelerated(net):
    """Whether ``net`` (or the network inside a mixed-precision / feature wrapper) was rewritten by the CPU layer."""
    while not getattr(net, MARK, False) and hasattr(net, "_backbone"):
        net = net._backbone  # pylint: disable=protected-access
    return bool(getattr(net, MARK, False))


def accelerate_if_enabled(net):
    """``models.cpu.accelerate(net)`` when the switch allows it here, else ``net`` unchanged."""
    if not cpu_layer_enabled():
        return net
    from .cpu import accelerate
    return accelerate(net)
