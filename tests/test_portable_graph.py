"""The portable graph (what GPU and Ascend run): plain MindSpore, checked against MindSpore's own documentation.

For one model per family, the train step and the evaluation network that train.py / eval.py build with the CPU
speed layer switched off are compiled, and ``benchmarks/accelerator_check.py`` reads their primitives: none may
be a ``Custom`` operator or one documented for CPU only, and every operator whose docstring does not name both
Ascend and GPU must be one the tool has reviewed (a new one fails here until it is looked at). The network
itself holds no cell of ``models.cpu`` and no bprop cell but the Newton inverses' (the math's).
"""
import os

import pytest

import mindspore as ms

from benchmarks import accelerator_check as check_tool
from helpers import SHALLOW
from models import create_model, is_accelerated
from models.cpu_switch import SWITCH
from models.softmax_free_transformer import NewtonInverse, NewtonInverseNorm

pytestmark = pytest.mark.unit

#: one shallow model per family (SOFT with 2 Newton steps: the same operators as 20, a smaller graph)
FAMILIES = {"soft_tiny": {"depths": SHALLOW, "newton_iters": 2},
            "soft_norm_tiny": {"depths": SHALLOW, "newton_iters": 2},
            "SwiftFormer_XS": {"depths": (2, 1, 1, 1)}}


@pytest.fixture(autouse=True)
def portable_graph_mode(monkeypatch):
    monkeypatch.setenv(SWITCH, "0")
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_portable_network_has_no_cpu_layer_and_only_the_math_bprop(name):
    net = create_model(name, num_classes=10, **FAMILIES[name])
    assert not is_accelerated(net)
    layer_cells = [n for n, cell in net.cells_and_names() if type(cell).__module__.startswith("models.cpu")]
    assert not layer_cells, layer_cells
    with_bprop = {type(cell) for _, cell in net.cells_and_names() if hasattr(type(cell), "bprop")}
    assert with_bprop <= {NewtonInverse, NewtonInverseNorm}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_portable_train_and_eval_graphs_pass_the_accelerator_check(name, tmp_path):
    config = check_tool._config(name, 64, 2)  # the model's own config: its mixed precision, EMA, clipping
    config.model_args = dict(config.model_args or {}, **FAMILIES[name])
    for what, (cell, inputs) in (("train", check_tool._train_step(config)), ("eval", check_tool._eval_net(config))):
        _, (counter, where) = check_tool.compile_graph(cell, inputs, tmp_path / what)
        rows = check_tool.check(counter, where)
        assert "Custom" not in counter
        assert sum(counter.values()) > 100, "the graph was not read"
        errors = [(r["op"], r["verdict"], r["where"]) for r in rows if r["error"]]
        assert not errors, f"{name} {what}: {errors}"


def test_the_check_names_what_it_must():
    """The verdicts on operators this project never uses: a CPU-only one, a Custom one, an unreviewed one."""
    assert check_tool.verdict("Custom", None) == ("custom", True)
    cpu_only, error = check_tool.verdict("Foo", frozenset({"CPU"}))
    assert (cpu_only, error) == ("cpu-only", True)
    assert check_tool.verdict("UnheardOfGrad", None) == ("undocumented", True)
    assert check_tool.verdict("Conv2D", check_tool.documented_platforms("Conv2D")[0]) == ("ok", False)
    assert check_tool.documented_platforms("Conv2D")[0] >= {"Ascend", "GPU"}
    counter, where = check_tool.graph_primitives(
        "  %1(x) = PrimFunc_Mul(%0, %0)\n      # In file " + os.path.join(str(check_tool.REPO), "models", "a.py")
        + ":12, 3~4/\n  %2(y) = Load(%1)\n  %3(z) = Custom(%2)\n")
    assert counter == {"Mul": 1, "Custom": 1} and where == {"Mul": os.path.join("models", "a.py") + ":12"}
