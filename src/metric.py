"""Top-k accuracy that is exact under padding and sharding.

Samples whose label is negative (the padding of multi-rank evaluation) are skipped; across ranks
the counts (correct top-1, correct top-5, samples) are summed, never the per-rank ratios.
"""
import numpy as np

__all__ = ["TopKAccuracy", "topk_correct", "print_eval_result"]


def _to_numpy(x):
    if isinstance(x, (tuple, list)):  # several heads: average their logits
        arrays = [_to_numpy(v) for v in x]
        return np.mean(np.stack(arrays), axis=0)
    if hasattr(x, "asnumpy"):
        return x.asnumpy()
    return np.asarray(x)


def topk_correct(logits, labels, ks=(1, 5)):
    """Per-k numbers of correct predictions and the number of valid (label >= 0) samples.

    A sample is top-k correct when fewer than k classes score strictly higher than its label
    (ties count in its favour, so the count does not depend on the sort order of equal scores).
    """
    logits = _to_numpy(logits).astype(np.float64)
    labels = _to_numpy(labels)
    if labels.ndim == 2:  # one-hot / soft targets: the arg-max is the class
        labels = labels.argmax(-1)
    labels = labels.astype(np.int64).reshape(-1)
    logits = logits.reshape(labels.shape[0], -1)
    valid = labels >= 0
    logits, labels = logits[valid], labels[valid]
    if labels.size == 0:
        return [0 for _ in ks], 0
    if labels.max() >= logits.shape[1]:
        raise ValueError(f"label {int(labels.max())} is out of range for {logits.shape[1]} classes.")
    target = logits[np.arange(labels.size), labels]
    higher = (logits > target[:, None]).sum(axis=1)
    return [int((higher < k).sum()) for k in ks], int(labels.size)


class TopKAccuracy:
    """Accumulates top-1 / top-5 accuracy over batches.

    ``update(logits, labels)``; ``counts()`` gives the raw sums (to all-reduce across ranks);
    ``result()`` gives ``{"top1": ..., "top5": ..., "count": N}``.
    """

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(ks)
        self.clear()

    def clear(self):
        self.correct = np.zeros(len(self.ks), np.int64)
        self.total = 0

    def update(self, logits, labels):
        correct, total = topk_correct(logits, labels, self.ks)
        self.correct += np.asarray(correct, np.int64)
        self.total += total

    def counts(self):
        """[correct@k1, correct@k2, ..., total] as float64 (exact for counts below 2**53)."""
        return np.concatenate([self.correct, [self.total]]).astype(np.float64)

    def set_counts(self, counts):
        counts = np.asarray(counts).reshape(-1)
        self.correct = np.rint(counts[:-1]).astype(np.int64)
        self.total = int(round(float(counts[-1])))

    def result(self):
        out = {"count": self.total}
        for k, c in zip(self.ks, self.correct):
            out[f"top{k}"] = float(c) / self.total if self.total else 0.0
        return out


def print_eval_result(result):
    """Print the two result lines of an evaluation (eval.py, eval_onnx.py; tests parse them)::

        accuracy=0.784420, per step time: 0.0123s, total cost time: 1.2345s
        top5_accuracy=0.990000, images=359

    ``result``: ``TopKAccuracy((1, 5)).result()`` plus ``"per_step"`` and ``"eval_cost"`` (seconds), i.e.
    ``{"top1", "top5", "count", "per_step", "eval_cost"}`` as ``src.eval_engine.EvalEngine.evaluate`` returns.
    """
    print(f"accuracy={result['top1']:.6f}, per step time: {result['per_step']:.4f}s, "
          f"total cost time: {result['eval_cost']:.4f}s", flush=True)
    print(f"top5_accuracy={result['top5']:.6f}, images={result['count']}", flush=True)
