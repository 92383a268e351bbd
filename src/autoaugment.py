"""AutoAugment / RandAugment for the training pipeline, built from MindSpore's own vision ops.

``parse_rand_augment`` reads timm's notation (``rand-m9-mstd0.5-inc1``) without importing MindSpore,
so the configuration can validate it; ``build_auto_augment`` returns the MindSpore operations.

Notation (sections joined by ``-``, the first is ``rand``):

* ``m<float>``  magnitude on timm's 0..10 scale (default 9)
* ``n<int>``    number of operations applied to each image (default 2)
* ``mstd<float>`` standard deviation of the magnitude noise (default 0; above 100: uniform in [0, m])
* ``mmax<float>`` upper clip of the magnitude (default 10)
* ``inc<0|1>``  severity increases with magnitude (MindSpore's RandAugment always works this way)
* ``w<int>``, ``p<float>``: timm's op-weight table / per-op probability; parsed but not supported
  by MindSpore's RandAugment (a warning is logged and they are ignored)

Differences from timm, by construction: MindSpore's RandAugment follows torchvision's op table;
magnitude noise is drawn once per image (timm draws it per operation), on a 0.5-step grid.
"""
import logging
import math
import re
from collections import namedtuple

__all__ = ["RandAugmentSpec", "parse_rand_augment", "build_auto_augment", "FILL_VALUE"]

_LOG = logging.getLogger(__name__)

# ImageNet mean in 0..255, the fill colour of geometric ops (as timm).
FILL_VALUE = (124, 116, 104)
# MindSpore's RandAugment picks magnitude index k of num_magnitude_bins levels spanning 0..max;
# 101 bins give timm's 0..10 scale in steps of 0.1.
_BINS = 101
_BIN_PER_UNIT = 10

RandAugmentSpec = namedtuple("RandAugmentSpec",
                             "num_ops magnitude magnitude_std magnitude_max increasing weight_index prob")

_EXAMPLE = "expected e.g. 'rand-m9-mstd0.5-inc1' (parts: m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>)"


def parse_rand_augment(spec):
    """Parse timm's RandAugment string; raise ValueError naming the bad part."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"randaugment: empty specification; {_EXAMPLE}")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(f"randaugment {spec!r} must start with 'rand'; {_EXAMPLE}")
    values = dict(num_ops=2, magnitude=9.0, magnitude_std=0.0, magnitude_max=10.0, increasing=False,
                  weight_index=None, prob=None)
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(-?\d+(?:\.\d*)?(?:e-?\d+)?|inf)", part)
        if not match:
            raise ValueError(f"randaugment: cannot read part {part!r} of {spec!r}; {_EXAMPLE}")
        name, text = match.groups()
        try:
            number = float(text)
        except ValueError:  # pragma: no cover - regex guarantees a number
            raise ValueError(f"randaugment: bad number in {part!r} of {spec!r}") from None
        if name == "m":
            values["magnitude"] = number
        elif name == "n":
            if not number.is_integer() or number < 1:
                raise ValueError(f"randaugment: n must be a positive integer, got {part!r} in {spec!r}")
            values["num_ops"] = int(number)
        elif name == "mstd":
            if number < 0:
                raise ValueError(f"randaugment: mstd must be >= 0, got {part!r} in {spec!r}")
            values["magnitude_std"] = number
        elif name == "mmax":
            if not 0 < number <= 10:
                raise ValueError(f"randaugment: mmax must be in (0, 10], got {part!r} in {spec!r}")
            values["magnitude_max"] = number
        elif name == "inc":
            if number not in (0.0, 1.0):
                raise ValueError(f"randaugment: inc must be 0 or 1, got {part!r} in {spec!r}")
            values["increasing"] = bool(number)
        elif name == "w":
            values["weight_index"] = int(number)
        elif name == "p":
            if not 0 <= number <= 1:
                raise ValueError(f"randaugment: p must be in [0, 1], got {part!r} in {spec!r}")
            values["prob"] = number
        else:
            raise ValueError(f"randaugment: unknown part {part!r} in {spec!r}; {_EXAMPLE}")
    if not 0 <= values["magnitude"] <= 10:
        raise ValueError(f"randaugment: magnitude must be in [0, 10], got {values['magnitude']:g} in {spec!r}")
    return RandAugmentSpec(**values)


def _magnitude_table(spec):
    """[(magnitude, count)]: a discretised distribution of the per-image magnitude."""
    top = spec.magnitude_max
    centre = min(spec.magnitude, top)
    std = spec.magnitude_std
    if std <= 0:
        return [(centre, 1)]
    grid = [i * 0.5 for i in range(int(top / 0.5) + 1)]
    if std > 100:  # timm: uniform in [0, m]
        return [(g, 1) for g in grid if g <= centre] or [(0.0, 1)]
    weights = {}
    for g in grid:
        w = math.exp(-0.5 * ((g - centre) / std) ** 2)
        # mass clipped at 0 / top accumulates at the ends, as timm clips the sampled magnitude
        weights[g] = w
    total = sum(weights.values())
    table = [(g, int(round(40 * w / total))) for g, w in weights.items()]
    table = [(g, c) for g, c in table if c > 0]
    return table or [(centre, 1)]


def build_auto_augment(autoaugment=False, randaugment="", interpolation=None):
    """MindSpore operations (a list, possibly empty) for AutoAugment or RandAugment on HWC uint8 images."""
    import mindspore.dataset.transforms as T
    import mindspore.dataset.vision as V

    if interpolation is None:
        interpolation = V.Inter.BILINEAR
    if autoaugment and randaugment:
        raise ValueError("autoaugment and randaugment are both on; choose one")
    if autoaugment:
        return [V.AutoAugment(policy=V.AutoAugmentPolicy.IMAGENET, interpolation=interpolation,
                              fill_value=FILL_VALUE)]
    if not randaugment:
        return []
    spec = parse_rand_augment(randaugment)
    if not spec.increasing:
        _LOG.warning("randaugment %r: inc0 is not available in MindSpore's RandAugment; "
                     "using its increasing-severity operations", randaugment)
    if spec.weight_index is not None:
        _LOG.warning("randaugment %r: op weights (w%d) are not supported; ops are chosen uniformly",
                     randaugment, spec.weight_index)
    if spec.prob is not None:
        _LOG.warning("randaugment %r: per-op probability p%g is not supported; every chosen op is applied",
                     randaugment, spec.prob)
    ops = []
    for magnitude, count in _magnitude_table(spec):
        op = V.RandAugment(num_ops=spec.num_ops, magnitude=int(round(magnitude * _BIN_PER_UNIT)),
                           num_magnitude_bins=_BINS, interpolation=interpolation, fill_value=FILL_VALUE)
        ops.extend([op] * count)
    if len(ops) == 1:
        return ops
    return [T.RandomChoice(ops)]
