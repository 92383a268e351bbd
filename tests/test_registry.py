"""The registry: every registered model builds with its published size and runs; bad names are clear errors."""
import numpy as np
import pytest

import mindspore as ms
from mindspore.nn.utils import no_init_parameters

from helpers import SHALLOW
from models import create_model, fuse_for_inference, inference_rewrites, is_fused, list_models

EXPECTED_PARAMS = {  # 1000 classes; SPEC §3 and §5 (SwiftFormer with its distillation head)
    "soft_tiny": 13_069_056, "soft_small": 24_110_092, "soft_medium": 45_812_707,
    "soft_large": 64_700_646, "soft_huge": 87_108_273,
    "soft_norm_tiny": 13_069_056, "soft_norm_small": 24_110_092, "soft_norm_medium": 45_812_707,
    "soft_norm_large": 64_700_646, "soft_norm_huge": 87_108_273,
    "SwiftFormer_XS": 3_475_360, "SwiftFormer_S": 6_092_128, "SwiftFormer_L1": 12_057_920,
    "SwiftFormer_L3": 28_494_736,
}
#: one model per code path runs in graph mode; the other variants of a family differ only in widths, heads and
#: depths (sizes checked above) and run in PyNative: a graph compile each would add ~15 s and test nothing more
GRAPH_COMPILED = {"soft_tiny", "soft_norm_tiny", "bench_soft_tiny_softmax", "SwiftFormer_XS"}


@pytest.fixture
def mode_for():
    """``mode_for(name)`` sets the execution mode for model ``name``; the previous mode comes back afterwards."""
    previous = ms.get_context("mode")
    yield lambda name: ms.set_context(mode=ms.GRAPH_MODE if name in GRAPH_COMPILED else ms.PYNATIVE_MODE)
    ms.set_context(mode=previous)


@pytest.mark.unit
def test_every_published_model_is_registered():
    assert set(EXPECTED_PARAMS) <= set(list_models())


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_every_published_model_has_its_published_size(name):
    with no_init_parameters():  # shapes only: initialising soft_huge's 87M weights would take ~10 s
        net = create_model(name)
    assert sum(int(np.prod(p.shape)) for p in net.trainable_params()) == EXPECTED_PARAMS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(include_benchmark=True))
def test_every_registered_model_runs_and_its_inference_pass_keeps_the_logits(name, mode_for):
    """A non-square input: plain evaluation, and the same weights through the inference pass (graph mode
    for one model per code path, see GRAPH_COMPILED). Each variant's own widths and heads, one block per
    stage (the sizes are checked above; compiling soft_huge's 60 blocks would take minutes and test
    nothing more). A family without inference rewrites (no ``reparameterize()``: SOFT) must come out of
    the pass unchanged, so only the others compile a twin.
    """
    mode_for(name)
    ms.set_seed(0)
    net = create_model(name, num_classes=10, depths=SHALLOW)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 64)).astype(np.float32))
    twin = create_model(name, num_classes=10, depths=SHALLOW)
    ms.load_param_into_net(twin, {p.name: p for p in net.get_parameters()}, strict_load=True)
    rewrites = bool(inference_rewrites(twin))
    before = {p.name: p.asnumpy().copy() for p in twin.get_parameters()}
    assert fuse_for_inference(twin) is twin and is_fused(twin)  # before its first call: a compiled graph is kept
    plain = net(x).asnumpy()
    assert plain.shape == (2, 10) and np.isfinite(plain).all()
    if rewrites:
        fused = twin(x).asnumpy()
        assert np.abs(fused - plain).max() <= 1e-5 * max(1.0, np.abs(plain).max())
    else:
        after = {p.name: p.asnumpy() for p in twin.get_parameters()}
        assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
        assert [type(c) for _, c in twin.cells_and_names()] == [type(c) for _, c in net.cells_and_names()]
    if name in GRAPH_COMPILED:  # only a compiled graph is kept; PyNative runs the cells as they are
        with pytest.raises(RuntimeError, match="before the network's first"):
            fuse_for_inference(net)


@pytest.mark.unit
def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        create_model("soft_tiney")
    message = str(err.value)
    assert "soft_tiny" in message and "Did you mean 'soft_tiny'" in message
    for name in list_models():
        assert name in message


@pytest.mark.unit
def test_list_models_filters_by_pattern():
    assert list_models("soft_norm_*") == sorted(n for n in EXPECTED_PARAMS if n.startswith("soft_norm_"))
    assert "bench_soft_tiny_softmax" not in list_models()
    assert "bench_soft_tiny_softmax" in list_models(include_benchmark=True)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_features_only_describes_the_selected_stages(name):
    net = create_model(name, features_only=True, out_indices=(1, 3), depths=SHALLOW)  # depth changes no width
    channels = create_model(name, num_classes=0, depths=SHALLOW).embed_dims
    assert net.feature_info == [{"index": 1, "num_chs": channels[1], "reduction": 8},
                                {"index": 3, "num_chs": channels[3], "reduction": 32}]
    assert not any(p.name.startswith(("head.", "dist_head.")) for p in net.get_parameters())
    with pytest.raises(ValueError, match="out_indices"):
        create_model(name, features_only=True, out_indices=(4,))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_features_only_gives_every_stage_map_at_a_non_square_size(name, mode_for):
    mode_for(name)
    net = create_model(name, features_only=True, depths=SHALLOW)
    net.set_train(False)
    maps = net(ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)))
    assert [tuple(m.shape) for m in maps] == [(2, info["num_chs"], 64 // info["reduction"], 96 // info["reduction"])
                                              for info in net.feature_info]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["soft_tiny", "SwiftFormer_XS"])
def test_features_only_loads_a_classifier_checkpoint_and_exports(name, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(3)
    classifier = create_model(name, num_classes=10, depths=SHALLOW)
    path = str(tmp_path / "classifier.ckpt")
    ms.save_checkpoint(classifier, path)
    net = create_model(name, features_only=True, out_indices=(0, 2), pretrained=path, depths=SHALLOW)
    net.set_train(False)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 32)).astype(np.float32)
    classifier.set_train(False)
    expected = [classifier.forward_stages(ms.Tensor(x))[i].asnumpy() for i in (0, 2)]
    got = [m.asnumpy() for m in net(ms.Tensor(x))]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    ms.export(net, ms.Tensor(x), file_name=str(tmp_path / "features"), file_format="MINDIR")
    exported = ms.nn.GraphCell(ms.load(str(tmp_path / "features.mindir")))
    for e, g in zip(got, exported(ms.Tensor(x))):
        np.testing.assert_allclose(g.asnumpy(), e, rtol=1e-5, atol=1e-5)
