"""MindSpore Hub entry point: ``create_network(name, *args, **kwargs)``, as in the model zoo.

    >>> import mindspore_hub as mshub
    >>> net = mshub.load("<hub uid of a SOFT / SwiftFormer asset>", num_classes=1000)

or, without the hub:

    >>> from mindspore_hub_conf import create_network
    >>> net = create_network("SwiftFormer_XS", num_classes=10)

Every name of ``models.list_models()`` is served (soft_tiny ... soft_huge, soft_norm_tiny ...
soft_norm_huge, SwiftFormer_XS / S / L1 / L3). The arguments go to ``models.create_model``
(``num_classes``, ``pretrained``, and constructor overrides such as ``drop_path_rate=0.1``); the
zoo's spelling ``class_num`` is accepted for ``num_classes``. The network is returned in evaluation
mode, without weights unless ``pretrained`` names a checkpoint (the hub loads its own).
"""
from models import create_model, list_models

__all__ = ["create_network"]


def create_network(name, *args, **kwargs):
    """The registered model ``name`` as an ``nn.Cell``: logits [B, num_classes] for images [B, 3, H, W].

    Raises:
        ValueError: ``name`` is not a registered model (the message lists the valid ones), or
            ``class_num`` and ``num_classes`` disagree.
    """
    valid = list_models()
    if name not in valid:
        raise ValueError(f"{name!r} is not a network of this repository; valid names: {', '.join(valid)}.")
    if "class_num" in kwargs:
        class_num = kwargs.pop("class_num")
        if kwargs.setdefault("num_classes", class_num) != class_num:
            raise ValueError(f"class_num={class_num} and num_classes={kwargs['num_classes']} disagree; give one.")
    net = create_model(name, *args, **kwargs)
    net.set_train(False)
    return net
