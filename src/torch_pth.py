"""Read PyTorch checkpoint files (``.pth`` / ``.pt`` / ``.pth.tar``) without PyTorch, executing nothing they name.

    >>> from src.torch_pth import read_pth
    >>> checkpoint, skipped = read_pth("SwiftFormer_XS.pth")   # ({"model": OrderedDict(name -> ndarray), ...}, [...])

``torch.save`` writes one of two formats, both read here:

* the zip format (the default since torch 1.6): ``<name>/data.pkl`` holds the pickled object, whose tensors
  refer to storages by key; ``<name>/data/<key>`` holds each storage's raw bytes; ``<name>/byteorder`` says
  ``little`` or ``big``;
* the legacy format (``_use_new_zipfile_serialization=False``, and every torch before 1.6; timm's
  ``.pth.tar`` files): one stream of pickles (magic number, protocol version, system information, the object,
  the list of storage keys), then each storage in that order as an int64 element count and its raw bytes.

The object's pickle goes through ``RestrictedUnpickler``: only the globals that rebuild tensors
(``torch._utils._rebuild_tensor_v2`` and relatives, the ``torch.*Storage`` types) and ``OrderedDict`` are
resolved (``ALLOWED_GLOBALS``). Any other global a file names (the ``argparse.Namespace`` of its training
arguments, numpy scalars, or ``os.system`` in a crafted file) becomes an inert ``Skipped`` object: nothing the
file names is imported or called. Tensors come back as numpy arrays (bfloat16 widened to float32);
``skipped_entries`` lists what was not a tensor.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["read_pth", "RestrictedUnpickler", "Skipped", "ALLOWED_GLOBALS", "STORAGE_DTYPES", "PthFormatError"]

#: the legacy format's first pickle
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: torch storage type -> numpy dtype ("bfloat16": read as uint16 and widened)
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
                  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class PthFormatError(ValueError):
    """A file that is not a PyTorch checkpoint this reader understands."""


class Skipped:
    """Stands for any object whose class or function a checkpoint names but this reader does not resolve.

    Building, calling and filling it do nothing; ``name`` is the global the pickle named.
    """

    name = "?"

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def __call__(self, *args, **kwargs):
        return Skipped()

    def __setstate__(self, state):
        del state

    def __setitem__(self, key, value):
        del key, value

    def append(self, value):
        del value

    def extend(self, values):
        del values

    def __repr__(self):
        return f"<skipped {self.name}>"


def _skipped_class(module, name):
    """A fresh subclass of Skipped that remembers the global's name (its instances print it)."""
    return type("Skipped", (Skipped,), {"name": f"{module}.{name}"})


class _Storage:
    """A storage reference from the pickle: its element type and key; ``array`` is filled when the bytes are read."""

    def __init__(self, type_name, key, numel):
        if type_name not in STORAGE_DTYPES:
            raise PthFormatError(f"unsupported tensor storage type torch.{type_name}")
        self.type_name, self.key, self.numel = type_name, str(key), int(numel)
        self.array = None

    @property
    def itemsize(self):
        dtype = STORAGE_DTYPES[self.type_name]
        return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize

    def set_bytes(self, data, byteorder="little"):
        dtype = STORAGE_DTYPES[self.type_name]
        order = "<" if byteorder == "little" else ">"
        if dtype == "bfloat16":
            bits = np.frombuffer(data, dtype=order + "u2", count=self.numel).astype(np.uint32) << 16
            self.array = bits.view(np.float32)
        else:
            self.array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder(order), count=self.numel)
            self.array = self.array.astype(np.dtype(dtype).newbyteorder("="), copy=False)


class _Tensor:
    """A tensor waiting for its storage's bytes (legacy files store them after the pickle)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialise(self):
        base = self.storage.array
        if base is None:
            raise PthFormatError(f"the bytes of storage {self.storage.key} are missing")
        if not self.size:
            return np.array(base[self.offset])
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=[s * itemsize for s in self.stride], writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """torch._utils._rebuild_tensor_v2 / _v3 (requires_grad, hooks, metadata, dtype are not needed)."""
    del unused
    if not isinstance(storage, _Storage):
        raise PthFormatError("a tensor in the file does not refer to a storage")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is its data here."""
    del unused
    return data


def _storage_type(name):
    def marker():  # never called: the persistent id carries the type
        raise PthFormatError(f"torch.{name} called directly")
    marker.storage_name = name
    return marker


#: (module, name) -> what the global means here: the tensor-rebuilding functions, storage types, OrderedDict
ALLOWED_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                   ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}
ALLOWED_GLOBALS.update({("torch", name): _storage_type(name) for name in STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``ALLOWED_GLOBALS`` (anything else: an inert ``Skipped``) and turns
    torch's storage references into ``_Storage`` records (one per key)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.storages = {}
        self.skipped = set()

    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        self.skipped.add(f"{module}.{name}")
        return _skipped_class(module, name)

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise PthFormatError(f"unsupported object in the file ({kind!r}; only tensors are read)")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        type_name = getattr(storage_type, "storage_name", None)
        if type_name is None:
            raise PthFormatError(f"unsupported tensor storage {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(type_name, key, numel)
        storage = self.storages[key]
        if view is not None:  # legacy files: a view into a larger storage, (view key, offset, size)
            _view_key, offset, _size = view
            return _View(storage, int(offset))
        return storage


class _View(_Storage):
    """A legacy view: the storage ``base`` from element ``offset`` on."""

    def __init__(self, base, offset):  # pylint: disable=super-init-not-called
        self.base, self.offset_in_base = base, offset
        self.type_name, self.key, self.numel = base.type_name, base.key, base.numel

    @property
    def array(self):
        return None if self.base.array is None else self.base.array[self.offset_in_base:]

    @array.setter
    def array(self, value):
        del value


def _materialise(obj):
    """Replace every ``_Tensor`` in nested dicts / lists / tuples by its numpy array."""
    if isinstance(obj, _Tensor):
        return obj.materialise()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise PthFormatError(f"{path} is a zip file but not a torch checkpoint (no single data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii").strip() or "little"
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])))
        obj = unpickler.load()
        for key, storage in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise PthFormatError(f"{path} lacks the bytes of storage {key}")
            storage.set_bytes(archive.read(member), byteorder)
    return obj, unpickler.skipped


def _read_legacy(path):
    with open(path, "rb") as stream:
        try:
            magic = RestrictedUnpickler(stream).load()
        except Exception:  # pylint: disable=broad-except  (any unreadable start: not this format)
            magic = None
        if magic != LEGACY_MAGIC:
            raise PthFormatError(f"{path} is not a PyTorch checkpoint (neither torch's zip format nor its legacy "
                                 "format)")
        RestrictedUnpickler(stream).load()  # protocol version
        info = RestrictedUnpickler(stream).load()  # system information: byte order, type sizes
        byteorder = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
        unpickler = RestrictedUnpickler(stream)
        obj = unpickler.load()
        keys = RestrictedUnpickler(stream).load()
        for key in keys:
            storage = unpickler.storages.get(str(key))
            if storage is None:
                raise PthFormatError(f"{path}: storage {key} is listed but no tensor uses it")
            (count,) = struct.unpack("<q" if byteorder == "little" else ">q", stream.read(8))
            data = stream.read(count * storage.itemsize)
            if len(data) != count * storage.itemsize:
                raise PthFormatError(f"{path} is truncated (storage {key})")
            storage.numel = count
            storage.set_bytes(data, byteorder)
    return obj, unpickler.skipped


def read_pth(path):
    """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays; returns ``(object, skipped)``.

    ``skipped``: the names of the globals that were not resolved (their objects are ``Skipped``).
    Raises FileNotFoundError, or PthFormatError (a ValueError) naming the problem.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Source checkpoint not found: {path}")
    try:
        reader = _read_zip if zipfile.is_zipfile(path) else _read_legacy
        obj, skipped = reader(path)
    except PthFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError, TypeError,
            IndexError, KeyError, AttributeError) as err:
        raise PthFormatError(f"cannot read {path} as a PyTorch checkpoint: {type(err).__name__}: {err}") from None
    return _materialise(obj), sorted(skipped)
