"""Read a `torch.save` zip checkpoint (pytorch_model.bin) into numpy arrays without torch.

The zip holds `<archive>/data.pkl` (a pickle whose tensors point at storages by key) and
`<archive>/data/<key>` (raw little-endian bytes). Only the few globals a state dict needs are
allowed; anything else is refused rather than executed.
"""
from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    strides = [s * storage.itemsize for s in stride]
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=strides).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"checkpoint refers to {module}.{name}, which a plain state dict does not contain; "
            "re-save it with safetensors or as a state dict")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            self.storages[key] = np.frombuffer(raw, storage_type.dtype)
        return self.storages[key]


def load(path: str) -> dict[str, np.ndarray]:
    """State dict {name: np.ndarray} from a torch zip checkpoint."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip-format torch checkpoint (torch >= 1.6); re-save it with "
                         "torch.save(...) or convert it to model.safetensors")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected exactly one data.pkl inside the archive, found {pkl}")
        prefix = pkl[0][:-len("/data.pkl")]
        with archive.open(pkl[0]) as f:
            state = _Unpickler(f, archive, prefix).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)
