"""TensorProto <-> numpy without going through `tf.make_tensor_proto` / `tf.make_ndarray`.

Both ends move full windows (67.5 MB in float32), so the hot path is one `tobytes()` into
`tensor_content` and one `np.frombuffer` out of it. Repeated-value fields (`float_val`,
`half_val`, ..., which the REST bridge and some clients send) are decoded too. String
tensors (DT_STRING, `string_val`) are numpy object arrays of `bytes`.
"""

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

NUMPY_BY_DTYPE = {
    types_pb2.DT_FLOAT: np.dtype("float32"),
    types_pb2.DT_HALF: np.dtype("float16"),
    types_pb2.DT_DOUBLE: np.dtype("float64"),
    types_pb2.DT_INT32: np.dtype("int32"),
    types_pb2.DT_INT64: np.dtype("int64"),
    types_pb2.DT_INT16: np.dtype("int16"),
    types_pb2.DT_INT8: np.dtype("int8"),
    types_pb2.DT_UINT8: np.dtype("uint8"),
    types_pb2.DT_BOOL: np.dtype("bool"),
}
DTYPE_BY_NUMPY = {v: k for k, v in NUMPY_BY_DTYPE.items()}
# Which repeated field carries the values when tensor_content is empty.
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val", types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
}


class TensorDecodeError(ValueError):
    """The TensorProto's values do not match its own dtype and shape."""


def dtype_name(dtype_enum: int) -> str:
    """'float32 (DT_FLOAT)' for a DataType enum value."""
    proto_name = types_pb2.DataType.Name(dtype_enum) if dtype_enum in types_pb2.DataType.values() \
        else f"DataType({dtype_enum})"
    numpy_dtype = NUMPY_BY_DTYPE.get(dtype_enum)
    return f"{numpy_dtype} ({proto_name})" if numpy_dtype is not None else proto_name


def proto_shape(proto: tensor_pb2.TensorProto) -> tuple[int, ...] | None:
    """The shape a TensorProto declares, or None for unknown rank."""
    if proto.tensor_shape.unknown_rank:
        return None
    return tuple(int(d.size) for d in proto.tensor_shape.dim)


def ndarray_to_tensor_proto(array, out: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """Pack a numpy array as a TensorProto with raw little-endian `tensor_content`.

    `out` (e.g. `request.inputs["fmri"]`) is filled in place: a later `CopyFrom` would
    copy a full window's bytes once more (about 70 ms for 67.5 MB on the project machines).
    """
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        return _strings_to_tensor_proto(array, out)
    dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in DTYPE_BY_NUMPY:
        raise TypeError(f"Unsupported array dtype for a TensorProto. Received: {array.dtype}")
    array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    proto = tensor_pb2.TensorProto() if out is None else out
    proto.Clear()
    proto.dtype = DTYPE_BY_NUMPY[dtype]
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in array.shape)
    proto.tensor_content = array.tobytes()
    return proto


def _strings_to_tensor_proto(array: np.ndarray, out: tensor_pb2.TensorProto | None) -> tensor_pb2.TensorProto:
    """DT_STRING: one `string_val` per element (str is encoded as UTF-8)."""
    values = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel().tolist()]
    if not all(isinstance(v, bytes) for v in values):
        raise TypeError("Unsupported object array for a TensorProto: its elements must be bytes or str")
    proto = tensor_pb2.TensorProto() if out is None else out
    proto.Clear()
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in array.shape)
    proto.string_val.extend(values)
    return proto


def tensor_proto_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto; raises TensorDecodeError when its contents disagree with it."""
    if proto.dtype == types_pb2.DT_STRING:
        return _string_tensor_to_ndarray(proto)
    dtype = NUMPY_BY_DTYPE.get(proto.dtype)
    if dtype is None:
        raise TensorDecodeError(f"unsupported dtype {dtype_name(proto.dtype)}")
    shape = proto_shape(proto)
    if shape is None:
        raise TensorDecodeError("tensor_shape has unknown rank")
    if any(n < 0 for n in shape):
        raise TensorDecodeError(f"tensor_shape has a negative dimension: {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    # Each read of a bytes field copies it (67.5 MB for a full window): read it once.
    content = proto.tensor_content
    if content:
        expected = count * dtype.itemsize
        if len(content) != expected:
            raise TensorDecodeError(f"tensor_content holds {len(content)} bytes but "
                                    f"shape {list(shape)} of {dtype} needs {expected}")
        return np.frombuffer(content, dtype=dtype.newbyteorder("<")).reshape(shape)
    values = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype == types_pb2.DT_HALF:
        flat = np.asarray(values, dtype=np.int32).astype(np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype=dtype)
    if flat.size == count:
        return flat.reshape(shape)
    # TensorFlow's rule: fewer values than elements repeat the last one (none: zeros).
    if flat.size < count:
        fill = flat[-1] if flat.size else dtype.type(0)
        return np.concatenate([flat, np.full(count - flat.size, fill, dtype)]).reshape(shape)
    raise TensorDecodeError(f"{_VALUE_FIELD[proto.dtype]} holds {flat.size} values but shape "
                            f"{list(shape)} has {count} elements")


def _string_tensor_to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = proto_shape(proto)
    if shape is None or any(n < 0 for n in shape):
        raise TensorDecodeError(f"tensor_shape is unknown or negative: {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(proto.string_val) != count:
        raise TensorDecodeError(f"string_val holds {len(proto.string_val)} values but shape "
                                f"{list(shape)} has {count} elements")
    flat = np.empty(count, dtype=object)
    flat[:] = list(proto.string_val)  # element-wise: np.array would make a fixed-width bytes array
    return flat.reshape(shape)
