"""Open Inference Protocol tensors ⇄ numpy arrays, checked against a model kind's tensor specs.

The wire messages are the compiled ones ``tritonclient.grpc`` ships (package ``inference``,
file ``grpc_service.proto``): one set of descriptors per process, so a process that also uses
Triton's client loads them once and nothing conflicts.

Inputs arrive either in ``raw_input_contents`` (one little-endian buffer per input, in input
order; a BYTES element is a 4-byte little-endian length and then its bytes) or in each input's
typed ``contents``. Outputs always go out in ``raw_output_contents``, which Triton's client reads
for every data type. Every mistake is an :class:`InvalidArgumentError` naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from rnnserve.server.errors import InvalidArgumentError
from tritonclient.grpc import service_pb2

Tensor = np.ndarray | list[bytes]
Tensors = dict[str, Tensor]
"""Tensors by name: a BYTES tensor is a flat list of ``bytes`` (a numpy object array is slow to
build and walk, and every use of one here is flat); the others are numpy arrays."""

NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT64": np.dtype("<u8"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model kind, as ModelMetadata advertises it.

    ``shape`` uses -1 for a dimension of any size. A request may also send the shape with one
    more trailing dimension of size 1 (``[N]`` or ``[N, 1]``), as batch-style clients do.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a request's shape fits (negative dimensions never do)."""
        if any(d < 0 for d in shape):
            return False
        if len(shape) == len(self.shape) + 1 and shape[-1] == 1:
            shape = shape[:-1]
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


def decode_inputs(request: service_pb2.ModelInferRequest, specs: Iterable[TensorSpec]
                  ) -> Tensors:
    """The request's inputs, checked against ``specs`` (names, datatypes, shapes, sizes).

    Returns numeric arrays shaped as the spec says (a trailing dimension of 1 is dropped) and
    BYTES tensors as flat lists.
    Raises InvalidArgumentError for an unknown, repeated or missing input, a datatype or shape
    other than the spec's, or contents that do not match the declared shape.
    """
    by_name = {s.name: s for s in specs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgumentError(
            "raw_input_contents", f"has {len(raw)} buffers for {len(request.inputs)} inputs")
    out: Tensors = {}
    for i, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidArgumentError(
                f"inputs[{i}]", f"unknown input {tensor.name!r} (this model takes "
                f"{', '.join(sorted(by_name))})")
        if tensor.name in out:
            raise InvalidArgumentError(tensor.name, "is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgumentError(
                tensor.name, f"datatype {tensor.datatype!r}, expected {spec.datatype}")
        shape = tuple(list(tensor.shape))  # (list() first: faster on a protobuf repeated field)
        if not spec.accepts(shape):
            raise InvalidArgumentError(
                tensor.name, f"shape {list(shape)}, expected {_shape_text(spec.shape)}")
        count = math.prod(shape)
        values = (_from_raw(tensor.name, spec.datatype, raw[i], count) if raw
                  else _from_contents(tensor, spec.datatype, count))
        out[tensor.name] = values if isinstance(values, list) else \
            values.reshape(shape[:len(spec.shape)])
    for spec in by_name.values():
        if not spec.optional and spec.name not in out:
            raise InvalidArgumentError(spec.name, "is a required input and is missing")
    return out


def _shape_text(shape: tuple[int, ...]) -> str:
    dims = ", ".join("N" if d == -1 else str(d) for d in shape)
    return f"[{dims}] (or [{dims}, 1])"


def _from_raw(name: str, datatype: str, buffer: bytes, count: int) -> Tensor:
    if datatype == "BYTES":
        return _split_bytes(name, buffer, count)
    dtype = NUMPY_TYPES[datatype]
    if len(buffer) != count * dtype.itemsize:
        raise InvalidArgumentError(
            name, f"raw contents hold {len(buffer)} bytes; {count} {datatype} elements need "
            f"{count * dtype.itemsize}")
    return np.frombuffer(buffer, dtype=dtype)


def _split_bytes(name: str, buffer: bytes, count: int) -> list[bytes]:
    if count == 1 and len(buffer) >= 4 and int.from_bytes(buffer[:4], "little") == len(buffer) - 4:
        return [buffer[4:]]  # the common case: one element
    items: list[bytes] = []
    pos = 0
    while pos < len(buffer):
        if pos + 4 > len(buffer):
            raise InvalidArgumentError(name, "raw BYTES contents end inside a length prefix")
        size = int.from_bytes(buffer[pos:pos + 4], "little")
        pos += 4
        if pos + size > len(buffer):
            raise InvalidArgumentError(name, "raw BYTES contents end inside an element")
        items.append(buffer[pos:pos + size])
        pos += size
    if len(items) != count:
        raise InvalidArgumentError(
            name, f"raw contents hold {len(items)} elements; the shape says {count}")
    return items


def _from_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor, datatype: str,
                   count: int) -> Tensor:
    values = list(getattr(tensor.contents, _CONTENTS_FIELD[datatype]))
    if len(values) != count:
        raise InvalidArgumentError(
            tensor.name, f"contents hold {len(values)} elements; the shape says {count}")
    if datatype == "BYTES":
        return values
    return np.asarray(values, dtype=NUMPY_TYPES[datatype])


def fill_outputs(response: service_pb2.ModelInferResponse, tensors: Mapping[str, Tensor],
                 specs: Iterable[TensorSpec], requested: Iterable[str] = ()) -> None:
    """Add the output tensors and their raw contents to ``response``, in spec order.

    ``requested`` (the request's ``outputs`` names) narrows the set; an unknown name is
    INVALID_ARGUMENT. Raises nothing else: the tensors come from the server.
    """
    specs = list(specs)
    wanted = list(requested)
    if wanted:
        known = {s.name for s in specs}
        for name in wanted:
            if name not in known:
                raise InvalidArgumentError(
                    "outputs", f"unknown output {name!r} (this model gives "
                    f"{', '.join(sorted(known))})")
    for spec in specs:
        if (wanted and spec.name not in wanted) or spec.name not in tensors:
            continue
        values = tensors[spec.name]
        if isinstance(values, list):
            shape: list[int] = [len(values)]
            raw = b"".join([len(b).to_bytes(4, "little") + b for b in values])
        else:
            shape = list(values.shape)
            raw = np.ascontiguousarray(values, dtype=NUMPY_TYPES[spec.datatype]).tobytes()
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        response.raw_output_contents.append(raw)


def parameter_value(param: service_pb2.InferParameter) -> bool | int | float | str | None:
    """The value an InferParameter holds, whichever of its fields is set (None for none)."""
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)
