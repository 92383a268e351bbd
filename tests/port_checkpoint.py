"""Make a checkpoint with the original MindSpore port's own model code (run as a script, in its own process:
the port's package is also called ``models``).

    python tests/port_checkpoint.py PORT_DIR OUT VARIANT CLASSES [--paper]

Builds the port's VARIANT (../shared/bench/ref_ms_port, ``port.build``) with random weights (its own
initialisation; BatchNorm statistics and biases randomised so that they matter), runs a 224 x 224 batch of 2 in
PyNative mode, and writes OUT.ckpt the way the port's training saved it (network, AdamWeightDecay moments,
step, learning rate) and OUT.npz (``input``, ``logits``). ``--paper`` first makes the port compute what the
paper's PyTorch code computes (exact GELU in the landmark activation and the stage-4 MLP, LayerNorm epsilon
1e-6 in stage 4): the converted model must then give the same logits to float32 rounding.
"""
import sys

import numpy as np


def make_paper_like(net, nn):
    """Swap the port's three deviations from the paper's code for the paper's functions, in place."""
    for name, cell in net.cells_and_names():
        if name.endswith("attn.Qnorm_act"):
            cell[1] = nn.GELU(approximate=False)
        if name.endswith(("layers.0.cell", "layers.1.cell")):
            old = cell[0]
            norm = nn.LayerNorm(old.normalized_shape, epsilon=1e-6)
            norm.gamma.set_data(old.gamma.value())
            norm.beta.set_data(old.beta.value())
            cell[0] = norm
        if name.endswith("layers.1.cell.1"):
            cell.activation = nn.GELU(approximate=False)


def main(port_dir, out, variant, classes, paper=False):
    sys.path.insert(0, port_dir)
    import mindspore as ms
    from mindspore import nn
    from port import build  # pylint: disable=import-error

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(3)
    net = build(variant, class_num=int(classes))
    rng = np.random.default_rng(0)
    for name, param in net.parameters_and_names():
        if "moving_variance" in name:
            param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
        elif "moving_mean" in name or name.endswith((".beta", ".bias")):
            param.set_data(ms.Tensor(rng.normal(0, 0.1, param.shape).astype(np.float32)))
    if paper:
        make_paper_like(net, nn)
    net.set_train(False)
    images = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits = net(ms.Tensor(images)).asnumpy()
    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3)
    ms.save_checkpoint(nn.TrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), optimizer), out + ".ckpt")
    np.savez(out + ".npz", input=images, logits=logits)
    print(f"port {variant}: {len(list(net.get_parameters()))} parameters, "
          f"{sum(p.size for p in net.trainable_params())} trainable values")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--paper"]
    main(*args, paper="--paper" in sys.argv[1:])
