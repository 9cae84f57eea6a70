"""A safe reader for PyTorch `.pth` state dicts, into numpy.

Pretrained weights published for PyTorch come as pickled state dicts. Loading one with `pickle`
(or `torch.load` without `weights_only`) can run arbitrary code, and torch is a heavy dependency
that convlab does not otherwise need. `read_state_dict` reads such a file without torch and
without executing pickled code: its unpickler only ever hands out the few globals a state dict
of dense tensors needs and refuses everything else.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from convlab.errors import ConvlabError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's pre-1.6 (non-zip) serialization format

# torch storage class -> numpy dtype of its flat buffer.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    """A flat typed buffer; legacy files fill `array` only after the main pickle is read."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.array: np.ndarray | None = None


class _TensorRef(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_grad_and_hooks):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_grad_and_hooks):
    return data


# Everything a state dict of dense tensors needs; anything else in the pickle is refused.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path, storages: dict[str, _Storage], read_storage=None):
        super().__init__(file)
        self.source, self.storages, self.read_storage = source, storages, read_storage

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return np.dtype(_STORAGE_DTYPES[name])
        raise ConvlabError(
            f"refusing to load {self.source}: its pickle references {module}.{name}, which a "
            "plain state dict of tensors never needs; use a trusted weights file"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ConvlabError(f"refusing to load {self.source}: unexpected record {pid!r:.80}")
        _, dtype, key, _location, numel, *_view = pid
        if not isinstance(dtype, np.dtype):
            raise ConvlabError(f"refusing to load {self.source}: unknown storage type {dtype!r}")
        if _view and _view[0] is not None:
            raise ConvlabError(f"cannot read {self.source}: legacy storage views are unsupported")
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, int(numel))
            if self.read_storage is not None:
                self.storages[key].array = self.read_storage(key, dtype, int(numel))
        return self.storages[key]


def _materialize(ref: _TensorRef, source: Path) -> np.ndarray:
    flat, size, stride = ref.storage.array, ref.size, ref.stride
    if flat is None:
        raise ConvlabError(f"cannot read {source}: a tensor's storage data is missing")
    if any(n == 0 for n in size):
        return np.zeros(size, flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    # as_strided does no bounds checks: a corrupt file must not read past the buffer.
    if ref.offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
        raise ConvlabError(f"cannot read {source}: a tensor lies outside its storage (corrupt?)")
    # Zero strides would let a few bytes stand for any number of elements (and the copy
    # below would allocate them all): a saved weight holds each of its elements once.
    if any(s == 0 and n > 1 for n, s in zip(size, stride, strict=True)) or \
            math.prod(size) > flat.size:
        raise ConvlabError(f"cannot read {source}: a tensor of shape {size} claims more "
                           f"elements than its storage holds ({flat.size}); corrupt file?")
    strides = [s * flat.itemsize for s in stride]
    view = np.lib.stride_tricks.as_strided(flat[ref.offset :], shape=size, strides=strides)
    return np.array(view, order="C")  # a contiguous copy, detached from the file's buffer


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch `.pth` state dict into numpy without torch and without running code.

    Both torch formats are read: the zip archive (data.pkl + data/<key>, torch >= 1.6) and the
    older single-stream format that this package's file uses.

    Args:
        path: the `.pth` file.

    Returns:
        Tensor name -> numpy array, with the file's dtypes, shapes and strides respected.

    Raises:
        ConvlabError: the pickle references anything but a state dict's few globals, or the
            file is not a readable state dict.
    """
    path = Path(path)
    storages: dict[str, _Storage] = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                obj = _load_zip(archive, path, storages)
        else:
            obj = _load_legacy(io.BytesIO(path.read_bytes()), path, storages)
        if not isinstance(obj, dict):
            raise ConvlabError(f"{path} holds a {type(obj).__name__}, not a state dict")
        return {k: _materialize(v, path) for k, v in obj.items() if isinstance(v, _TensorRef)}
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as err:
        raise ConvlabError(f"cannot read {path} as a PyTorch state dict: {err}") from None


def _load_zip(archive: zipfile.ZipFile, path: Path, storages: dict[str, _Storage]):
    pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
    if pkl is None:
        raise ConvlabError(f"cannot read {path}: a zip without data.pkl is not a .pth file")
    prefix = pkl[: -len("data.pkl")]
    order = "<"
    if f"{prefix}byteorder" in archive.namelist():
        order = "<" if archive.read(f"{prefix}byteorder") == b"little" else ">"

    def read_storage(key, dtype, numel):
        return np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype.newbyteorder(order), numel)

    with archive.open(pkl) as f:
        return _StateDictUnpickler(f, path, storages, read_storage).load()


def _load_legacy(f: io.BytesIO, path: Path, storages: dict[str, _Storage]):
    if _StateDictUnpickler(f, path, storages).load() != _LEGACY_MAGIC:
        raise ConvlabError(f"cannot read {path}: neither a zip nor a legacy torch file")
    _StateDictUnpickler(f, path, storages).load()  # protocol version
    sys_info = _StateDictUnpickler(f, path, storages).load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    order = "<" if little else ">"
    obj = _StateDictUnpickler(f, path, storages).load()
    # The raw storages follow the pickles, in this order, each as int64 numel + data.
    for key in _StateDictUnpickler(f, path, storages).load():
        storage = storages[key]
        numel = int(np.frombuffer(f.read(8), order + "i8")[0])
        data = f.read(numel * storage.dtype.itemsize)
        if numel != storage.numel or len(data) != numel * storage.dtype.itemsize:
            raise ConvlabError(f"cannot read {path}: storage {key} is truncated")
        storage.array = np.frombuffer(data, storage.dtype.newbyteorder(order))
    return obj
