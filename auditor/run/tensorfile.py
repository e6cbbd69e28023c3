"""A safetensors file written block of rows by block of rows.

``--save-adversarial`` and ``--save-explanations`` write one tensor per name with a row per
audited sample; holding them all until one ``safetensors.torch.save`` at the end makes
memory grow with the rows, and safetensors cannot append. Every name, dtype and full
shape is known before the audit starts, so :func:`create` writes the safetensors header
(8-byte little-endian length, then the JSON header ``{name: {dtype, shape,
data_offsets}}`` padded with spaces to a multiple of 8) and sizes the file; a
:class:`RowWriter` then writes any block of consecutive rows at its offset. Under
torchrun every rank opens the one file and writes its own rows.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

Layout = dict[str, tuple[np.dtype, tuple[int, ...]]]  # name -> (dtype, full shape), in file order

# numpy dtype -> safetensors dtype name (safetensors stores little-endian values)
DTYPE_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
               np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
               np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
HEADER_ALIGNMENT = 8


def header(layout: Layout) -> bytes:
    """The bytes before the tensor data: the length prefix and the padded JSON header."""
    entries, offset = {}, 0
    for name, (dtype, shape) in layout.items():
        dtype = np.dtype(dtype)
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {dtype} has no safetensors name; use one of "
                             f"{', '.join(str(d) for d in DTYPE_NAMES)}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries[name] = {"dtype": DTYPE_NAMES[dtype], "shape": [int(n) for n in shape],
                         "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(len(text) + 8) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text


def create(path: Path, layout: Layout) -> None:
    """Write the header of ``layout`` to ``path`` and size the file to hold every tensor (zeros until
    written)."""
    head = header(layout)
    size = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for dtype, shape in layout.values())
    with open(path, "wb") as stream:
        stream.write(head)
        stream.truncate(len(head) + size)


class RowWriter:
    """Writes blocks of rows into a file made by :func:`create`; the layout is read back from its header, so
    any process that sees the file can write its rows. Use as a context manager (closing flushes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR)
        try:
            self._tensors, self._data_start = _read_header(self._fd, self.path)
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, first_row: int, tensors: dict[str, np.ndarray]) -> None:
        """Write rows ``first_row .. first_row + len(values) - 1`` of every tensor of the file (all of them,
        so that no tensor is left holding the zeros it was created with)."""
        if set(tensors) != set(self._tensors):
            raise ValueError(f"expected rows of every tensor of {self.path.name} ({', '.join(self._tensors)}), "
                             f"got {', '.join(tensors)}")
        for name, values in tensors.items():
            dtype, shape, begin = self._tensors[name]
            values = np.asarray(values)
            if values.dtype != dtype:
                raise ValueError(f"{name}: expected {dtype} rows, got {values.dtype}")
            if values.shape[1:] != shape[1:] or not 0 <= first_row <= first_row + len(values) <= shape[0]:
                raise ValueError(f"{name}: rows {first_row}..{first_row + len(values) - 1} of shape "
                                 f"{values.shape[1:]} do not fit a tensor of shape {shape}")
            row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
            payload = memoryview(np.ascontiguousarray(values, dtype=dtype.newbyteorder("<"))).cast("B")
            offset = self._data_start + begin + first_row * row_bytes
            while payload:  # os.pwrite may write less than asked
                written = os.pwrite(self._fd, payload, offset)
                payload, offset = payload[written:], offset + written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_header(fd: int, path: Path) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int]], int]:
    prefix = os.pread(fd, 8, 0)
    if len(prefix) != 8:
        raise ValueError(f"{path} is not a safetensors file made for row writing (no header)")
    (length,) = struct.unpack("<Q", prefix)
    entries = json.loads(os.pread(fd, length, 8))
    tensors = {name: (DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"][0])
               for name, entry in entries.items()}
    return tensors, 8 + length
