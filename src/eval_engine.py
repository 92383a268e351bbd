"""Evaluation of a classifier on a (possibly sharded, padded) evaluation dataset."""
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.metric import TopKAccuracy

__all__ = ["EvalNetwork", "EvalEngine"]


class EvalNetwork(nn.Cell):
    """Logits of ``network`` in float32; several outputs (e.g. head + distillation head) are averaged."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)
        self.network = network

    def construct(self, image):
        out = self.network(image)
        if isinstance(out, (tuple, list)):
            total = ops.cast(out[0], ms.float32)
            for i in range(1, len(out)):
                total = total + ops.cast(out[i], ms.float32)
            return total / len(out)
        return ops.cast(out, ms.float32)


class AllReduceSum(nn.Cell):
    """Sum of a tensor over the communication group."""

    def __init__(self):
        super().__init__()
        self.op = ops.AllReduce()

    def construct(self, x):
        return self.op(x)


class EvalEngine:
    """Top-1 / top-5 accuracy of ``network`` on ``dataset`` (columns ``image``, ``label``).

    Labels below 0 (padding added to make shards equal) are skipped; with ``rank_size > 1`` the
    per-rank counts are summed over all ranks, so the accuracy is exact.
    """

    def __init__(self, network, dataset, rank_size=1):
        self.network = network
        self.eval_network = EvalNetwork(network)
        self.eval_network.set_train(False)
        self.dataset = dataset
        self.rank_size = int(rank_size)
        self.metric = TopKAccuracy((1, 5))
        self._reduce = AllReduceSum() if self.rank_size > 1 else None
        self.steps = dataset.get_dataset_size()
        self.batch_size = None
        self._iterator = None

    def compile(self):
        """Compile the evaluation graph for the dataset's batch shape (not run); returns the seconds taken."""
        start = time.time()
        shapes, types = self.dataset.output_shapes(), self.dataset.output_types()
        self.batch_size = int(shapes[0][0])
        image = ms.Tensor(np.zeros(shapes[0], types[0]))
        self.network.set_train(False)
        self.eval_network.compile(image)
        return time.time() - start

    def evaluate(self):
        """Returns ``{"top1", "top5", "count", "eval_cost", "per_step"}``; leaves the network in eval mode."""
        start = time.time()
        self.network.set_train(False)
        self.metric.clear()
        steps = 0
        if self._iterator is None:  # one iterator for all evaluations (a pipeline allows one consumer)
            self._iterator = self.dataset.create_tuple_iterator(columns=["image", "label"], num_epochs=-1)
        for image, label in self._iterator:
            count = image.shape[0]
            if self.batch_size is None:
                self.batch_size = count
            if count < self.batch_size:  # pad the last batch (label -1, not counted): one graph for all batches
                pad = self.batch_size - count
                image = ms.Tensor(np.concatenate([image.asnumpy(), np.zeros((pad,) + tuple(image.shape[1:]),
                                                                            image.asnumpy().dtype)]))
                label = np.concatenate([label.asnumpy().reshape(-1), np.full(pad, -1, np.int32)])
            logits = self.eval_network(image)
            self.metric.update(logits, label)
            steps += 1
        if self._reduce is not None:
            summed = self._reduce(ms.Tensor(self.metric.counts().astype(np.float32)))
            self.metric.set_counts(summed.asnumpy())
        result = self.metric.result()
        result["eval_cost"] = time.time() - start
        result["per_step"] = result["eval_cost"] / max(steps, 1)
        return result
