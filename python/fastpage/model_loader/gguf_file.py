"""Reads a GGUF file's metadata and tensor index, and dequantizes its tensors.

gguf.GGUFReader builds numpy views for every element of every metadata array, which takes tens of
seconds on a 49k-token vocabulary; this reader parses the header with `struct` (well under a second)
and leaves the tensor bytes memory-mapped. Dequantization is the gguf package's.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types: fixed-size scalars by struct format; 8 is a string, 9 an array.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: GGUF's dimensions (ne) reversed
    qtype: GGMLQuantizationType
    offset: int  # absolute, in the file


class _Cursor:
    """Sequential little- or big-endian reads from a buffer."""

    def __init__(self, buffer: memoryview, endian: str):
        self.buffer, self.endian, self.pos = buffer, endian, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.endian + fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("Q")
        raw = bytes(self.buffer[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            element_type, count = self.scalar("I"), self.scalar("Q")
            if element_type in _SCALAR_FORMATS:  # one bulk read for numeric arrays
                fmt = f"{self.endian}{count}{_SCALAR_FORMATS[element_type]}"
                values = list(struct.unpack_from(fmt, self.buffer, self.pos))
                self.pos += struct.calcsize(fmt)
                return values
            return [self.value(element_type) for _ in range(count)]
        if value_type not in _SCALAR_FORMATS:
            raise ValueError(f"GGUF: unknown metadata value type {value_type}")
        return self.scalar(_SCALAR_FORMATS[value_type])


class GGUFFile:
    """A GGUF file: `metadata` (key -> value) and `tensors` (name -> info), data memory-mapped."""

    def __init__(self, path: str):
        self.path = path
        # A plain ndarray view of the map: slices of an np.memmap pay for subclass bookkeeping, which
        # adds up over the thousands of row chunks dequantization makes.
        self._data = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
        buffer = memoryview(self._data)
        if bytes(buffer[:4]) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        # The version is a small number: read little-endian, a huge value means a big-endian file.
        endian = "<" if struct.unpack_from("<I", buffer, 4)[0] < 0x10000 else ">"
        cursor = _Cursor(buffer, endian)
        cursor.pos = 4
        version = cursor.scalar("I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        if endian == ">":
            raise ValueError(f"{path}: big-endian GGUF files are not supported")
        num_tensors, num_kv = cursor.scalar("Q"), cursor.scalar("Q")

        self.metadata: dict[str, Any] = {}
        for _ in range(num_kv):
            key = cursor.string()
            self.metadata[key] = cursor.value(cursor.scalar("I"))

        raw_infos = []
        for _ in range(num_tensors):
            name = cursor.string()
            ne = [cursor.scalar("Q") for _ in range(cursor.scalar("I"))]
            raw_infos.append((name, ne, GGMLQuantizationType(cursor.scalar("I")), cursor.scalar("Q")))
        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-cursor.pos // alignment) * alignment
        self.tensors = {
            name: GGUFTensorInfo(name, tuple(reversed(ne)), qtype, data_start + offset)
            for name, ne, qtype, offset in raw_infos
        }

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise ValueError(f"{self.path}: GGUF metadata has no {key!r}")
        return self.metadata[key]

    def load_array(self, name: str) -> np.ndarray:
        """The tensor dequantized to a float32 array, in torch shape ([out, in] for linear weights)."""
        if name not in self.tensors:
            raise ValueError(f"{self.path}: GGUF file has no tensor {name!r}")
        info = self.tensors[name]
        block_size, type_size = GGML_QUANT_SIZES[info.qtype]
        row = info.shape[-1]
        if row % block_size:
            raise ValueError(f"{name}: row length {row} is not a multiple of the {info.qtype.name} block")
        num_rows = math.prod(info.shape[:-1])
        row_bytes = row // block_size * type_size
        raw = self._data[info.offset:info.offset + num_rows * row_bytes].reshape(num_rows, row_bytes)
        values = np.asarray(dequantize(raw, info.qtype), dtype=np.float32)
        if not values.flags.writeable:  # a view of the read-only map (F32 tensors): own a copy
            values = values.copy()
        return values.reshape(info.shape)
