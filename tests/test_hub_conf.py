"""mindspore_hub_conf.create_network: every registered model by name, arguments passed on, clear errors.

Every model is built with one block per stage (``depths=(1, 1, 1, 1)``, forwarded to the constructor)
to keep the test light; one of them runs a forward pass at 32 x 32.
"""
import numpy as np
import pytest

import mindspore as ms

import helpers
from mindspore_hub_conf import create_network
from models import list_models

pytestmark = pytest.mark.unit

SHALLOW = {"depths": helpers.SHALLOW}


def _head_width(net):
    """Output width of every final classifier (SwiftFormer has a head and a distillation head)."""
    widths = {cell.weight.shape[0] for name, cell in net.cells_and_names()
              if name.split(".")[-1] in ("head", "dist_head") and hasattr(cell, "weight")}
    assert widths, "no classification head found"
    return widths


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_by_name(name):
    net = create_network(name, num_classes=10, **SHALLOW)
    assert isinstance(net, ms.nn.Cell) and not net.training
    assert _head_width(net) == {10}


@pytest.fixture
def pynative():
    """PyNative mode for one small forward pass (no graph compilation); the previous mode restored."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


def test_zoo_spelling_class_num_and_one_forward(pynative):
    ms.set_seed(0)
    net = create_network("SwiftFormer_XS", class_num=10, **SHALLOW)
    assert _head_width(net) == {10}
    logits = net(ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)))
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    assert logits.shape == (2, 10) and np.isfinite(logits.asnumpy()).all()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="not a network of this repository") as info:
        create_network("resnet50")
    assert all(name in str(info.value) for name in list_models())


def test_conflicting_class_counts_are_refused():
    with pytest.raises(ValueError, match="class_num=10 and num_classes=5 disagree"):
        create_network("soft_tiny", class_num=10, num_classes=5, **SHALLOW)
