"""Read PyTorch's legacy (pre-zip) checkpoint files into numpy arrays, without torch.

The legacy format is a run of pickles followed by raw storage bytes:
magic number, protocol version, system info, the object itself (tensors point at storages by key through
`persistent_load`), the list of storage keys, then for each key in that order an 8-byte little-endian element
count and the elements. Only the globals such a state dict needs may be named by the pickle; anything else is
refused, so a hostile file cannot run code.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class StorageType:
    """Stands in for `torch.FloatStorage` and friends: only the element type matters here."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class Storage:
    """A flat buffer that is filled from the tail of the file once every pickle has been read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class TensorRef:
    """A tensor whose storage bytes are not read yet: a strided view into a Storage."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if not self.size:
            return data[self.offset].copy()
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= len(data) or min(self.stride) < 0:
            raise pickle.UnpicklingError("tensor reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError("tensor does not refer to a storage")
    return TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a legacy state dict uses; storages come back as empty Storage objects."""

    def __init__(self, stream: BinaryIO, storages: dict[str, Storage]):
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError("storage type is not a known torch storage")
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views (pre-1.0 checkpoints) are not supported")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(storage_type.dtype, int(numel))
        return storage


def _load_plain(stream: BinaryIO):
    """One pickle that may hold only plain data (numbers, strings, containers)."""
    return _RestrictedUnpickler(stream, {}).load()


def _read_storage_bytes(stream: BinaryIO, storage: Storage) -> None:
    header = stream.read(8)
    if len(header) != 8:
        raise pickle.UnpicklingError("checkpoint ends before a storage header")
    numel = int.from_bytes(header, "little", signed=False)
    if numel != storage.numel:
        raise pickle.UnpicklingError(f"storage holds {numel} elements, the pickle said {storage.numel}")
    nbytes = numel * storage.dtype.itemsize
    raw = stream.read(nbytes)
    if len(raw) != nbytes:
        raise pickle.UnpicklingError("checkpoint ends inside a storage")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def _to_numpy(obj):
    if isinstance(obj, TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {key: _to_numpy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(value) for value in obj)
    return obj


def load_legacy_checkpoint(stream: BinaryIO):
    """Whatever object the checkpoint holds, with every tensor turned into a numpy array."""
    if _load_plain(stream) != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a legacy PyTorch checkpoint (wrong magic number)")
    protocol = _load_plain(stream)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _load_plain(stream)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise pickle.UnpicklingError("big-endian checkpoints are not supported")
    storages: dict[str, Storage] = {}
    result = _RestrictedUnpickler(stream, storages).load()
    keys = _load_plain(stream)
    if sorted(map(str, keys)) != sorted(storages):
        raise pickle.UnpicklingError("the storage key list does not match the storages the tensors use")
    for key in keys:
        _read_storage_bytes(stream, storages[key])
    return _to_numpy(result)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A legacy `torch.save(model.state_dict())` file as {name: numpy array}."""
    with open(path, "rb") as stream:
        state = load_legacy_checkpoint(stream)
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"checkpoint holds a {type(state).__name__}, not a state dict")
    return dict(state)
