"""Signature specs read from a SavedModel's SignatureDefs, and request validation.

Every check raises `RequestError` with the gRPC status code the server answers with and a
message that names the expected spec, so a client can fix its request from the message.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.tensors import NUMPY_BY_DTYPE, TensorDecodeError, dtype_name, proto_shape, tensor_proto_to_ndarray


def check_client_options(*, version, version_label, timeout_s: float, retries: int) -> None:
    """The options the gRPC and REST clients share, checked alike (ValueError naming the field)."""
    if retries < 0:
        raise ValueError(f"`retries` must be >= 0. Received: retries={retries}")
    if timeout_s <= 0:
        raise ValueError(f"`timeout_s` must be > 0. Received: timeout_s={timeout_s}")
    if version is not None and version_label is not None:
        raise ValueError(f"give `version` or `version_label`, not both. Received: version={version}, "
                         f"version_label={version_label!r}")


class RequestError(Exception):
    """A request the server refuses; `code` is the grpc.StatusCode to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, DataType enum and shape (-1 for a free dimension) of one signature tensor."""
    name: str
    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank

    @property
    def numpy_dtype(self) -> np.dtype | None:
        return NUMPY_BY_DTYPE.get(self.dtype)

    def describe(self) -> str:
        shape = "unknown rank" if self.shape is None else f"shape {list(self.shape)}"
        return f"{self.name!r}: {dtype_name(self.dtype)}, {shape}"

    @classmethod
    def from_tensor_info(cls, name: str, info: meta_graph_pb2.TensorInfo) -> "TensorSpec":
        if info.tensor_shape.unknown_rank:
            return cls(name, info.dtype, None)
        return cls(name, info.dtype, tuple(int(d.size) for d in info.tensor_shape.dim))


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_signature_def(cls, name: str, signature_def: meta_graph_pb2.SignatureDef) -> "SignatureSpec":
        return cls(name,
                   {k: TensorSpec.from_tensor_info(k, v) for k, v in signature_def.inputs.items()},
                   {k: TensorSpec.from_tensor_info(k, v) for k, v in signature_def.outputs.items()})

    def describe_inputs(self) -> str:
        return "; ".join(spec.describe() for spec in self.inputs.values())


def _check_tensor(signature: SignatureSpec, spec: TensorSpec, proto: tensor_pb2.TensorProto) -> np.ndarray:
    expected = f"signature {signature.name!r} expects input {spec.describe()}"
    if proto.dtype != spec.dtype:
        hint = ""
        if proto.dtype == types_pb2.DT_HALF and spec.dtype == types_pb2.DT_FLOAT:
            hint = f" (float16 windows go to signature '{signature.name}_fp16')"
        elif proto.dtype == types_pb2.DT_FLOAT and spec.dtype == types_pb2.DT_HALF:
            hint = f" (float32 windows go to signature '{signature.name.removesuffix('_fp16')}')"
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{expected}; got dtype {dtype_name(proto.dtype)}{hint}")
    shape = proto_shape(proto)
    if spec.shape is not None:
        if shape is None or len(shape) != len(spec.shape):
            got = "unknown rank" if shape is None else f"rank {len(shape)} shape {list(shape)}"
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{expected}; got {got}, rank must be {len(spec.shape)}")
        for axis, (want, have) in enumerate(zip(spec.shape, shape)):
            if (want >= 0 and have != want) or have < 1:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"{expected}; got shape {list(shape)} (axis {axis} is {have})")
    try:
        return tensor_proto_to_ndarray(proto)
    except TensorDecodeError as err:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{expected}; {err}") from None


def check_batch_size(signature: SignatureSpec, inputs: Mapping[str, tensor_pb2.TensorProto],
                     max_batch: int | None) -> None:
    """Refuse a batch dimension over `max_batch` from the shapes alone, before any tensor
    is decoded (a 47-byte request may declare a batch of 2048 windows to be zero-filled)."""
    if not max_batch:
        return
    for name, proto in inputs.items():
        spec = signature.inputs.get(name)
        shape = proto_shape(proto)
        if spec is None or not shape or spec.shape is None or not spec.shape or spec.shape[0] >= 0:
            continue  # no batch axis
        if shape[0] > max_batch:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has batch size {shape[0]}, over the server's maximum "
                               f"{max_batch} (--max-batch); send smaller batches")


def validate_inputs(signature: SignatureSpec, inputs: Mapping[str, tensor_pb2.TensorProto],
                    max_batch: int | None = None) -> dict[str, np.ndarray]:
    """Check names, dtypes, ranks and shapes of a request's inputs (and the batch size
    against `max_batch`); return them decoded."""
    unknown = sorted(set(inputs) - set(signature.inputs))
    if unknown:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown input(s) {unknown} for signature {signature.name!r}; "
                           f"expected {signature.describe_inputs()}")
    missing = sorted(set(signature.inputs) - set(inputs))
    if missing:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"missing input(s) {missing} for signature {signature.name!r}; "
                           f"expected {signature.describe_inputs()}")
    check_batch_size(signature, inputs, max_batch)
    arrays = {name: _check_tensor(signature, spec, inputs[name]) for name, spec in signature.inputs.items()}
    batch_sizes = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batch_sizes) > 1:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"inputs of signature {signature.name!r} disagree on batch size: {sorted(batch_sizes)}")
    return arrays


def validate_output_filter(signature: SignatureSpec, output_filter: Sequence[str]) -> list[str]:
    """The outputs to return: all of them, or the requested subset if every name exists."""
    if not output_filter:
        return list(signature.outputs)
    unknown = [name for name in output_filter if name not in signature.outputs]
    if unknown:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output_filter names {unknown}, which signature {signature.name!r} does not "
                           f"have; its outputs are {sorted(signature.outputs)}")
    return list(dict.fromkeys(output_filter))
