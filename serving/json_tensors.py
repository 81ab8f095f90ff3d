"""TF-Serving's JSON tensor encoding (REST `:predict`): request JSON -> TensorProtos, outputs -> JSON.

It follows TF-Serving's `util/json_tensor.cc` as documented in "TensorFlow Serving RESTful
API": a request has `instances` (row format: one item per batch element, an object of named
inputs when the signature has several) or `inputs` (columnar: the whole tensor, or an object
of named tensors), never both; the response is `{"predictions": ...}` for rows and
`{"outputs": ...}` for columns, with the output name left out when there is only one.

Values take the dtype of the signature's input, as in TF-Serving: JSON numbers for float
and double, whole numbers for the integer types, true/false for bool, strings or
`{"b64": ...}` for string tensors. TF-Serving has no JSON form for float16 (DT_HALF):
such an input answers UNIMPLEMENTED, so float16 windows go over gRPC to the `_fp16`
signatures. `NaN`, `Infinity` and `-Infinity` are accepted and written, as TF-Serving does.
Floats are written in their shortest form that reads back to the same float32/float64
(TF-Serving does the same), so JSON outputs equal the gRPC ones bit for bit.

The TensorProtos built here go through the same `validate_inputs` as a gRPC request, so
shape, batch and size checks are the gRPC path's.
"""

import base64
import binascii
import itertools
import json
from collections.abc import Mapping

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.tensors import NUMPY_BY_DTYPE, ndarray_to_tensor_proto
from serving.validation import RequestError, SignatureSpec

SIGNATURE_KEY = "signature_name"
INSTANCES_KEY = "instances"
INPUTS_KEY = "inputs"
PREDICTIONS_KEY = "predictions"
OUTPUTS_KEY = "outputs"
BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"  # string outputs with this name suffix are written as {"b64": ...}

_FLOAT_DTYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
_INT_DTYPES = (types_pb2.DT_INT8, types_pb2.DT_UINT8, types_pb2.DT_INT16, types_pb2.DT_INT32,
               types_pb2.DT_INT64)
_NON_FINITE_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def tf_dtype_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: 'float' for DT_FLOAT, 'half' for DT_HALF, 'int32', ..."""
    name = types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else str(dtype)
    return name.removeprefix("DT_").lower()


def _json_type(value) -> str:
    """The JSON type name TF-Serving's messages use."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _debug(value, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_base64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


# === Request: JSON -> arrays -> TensorProtos ===

def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object; INVALID_ARGUMENT with the parser's position otherwise."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except UnicodeDecodeError as err:
        raise _invalid(f"JSON Parse error: Invalid encoding in string at offset: {err.start}") from None
    except json.JSONDecodeError as err:
        raise _invalid(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    except RecursionError:
        raise _invalid("JSON Parse error: nested too deeply") from None
    if not isinstance(document, dict):
        raise _invalid(f"JSON Value: {_debug(document)} Is not object")
    return document


def signature_name_of(document: dict) -> str:
    """The optional `signature_name` ("" when absent: the default signature)."""
    name = document.get(SIGNATURE_KEY, "")
    if not isinstance(name, str):
        raise _invalid(f"JSON Value: {_debug(document)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    return name


def dense_shape(value) -> tuple[int, ...]:
    """The shape a nested list declares through its first elements (TF-Serving's rule)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _leaves(value, shape: tuple[int, ...]) -> list:
    """The leaf values of a nested list of `shape`, row-major; refuses ragged lists. One level
    at a time, so the per-element work is C loops (a 32^3 x 8 window is 262k leaves)."""
    level = [value]
    for depth, size in enumerate(shape):
        if not all(type(item) is list and len(item) == size for item in level):
            bad = next(item for item in level if not (type(item) is list and len(item) == size))
            if type(bad) is not list:
                raise _invalid(f"JSON Value: {_debug(bad)} found at incorrect level: {depth + 1} "
                               f"in the JSON DOM. Expected at level: {len(shape)}")
            raise _invalid(f"Encountered list at unexpected size: {len(bad)} at level: {depth} "
                           f"expected size: {size}")
        level = list(itertools.chain.from_iterable(level))
    nested = next((item for item in level if type(item) is list), None)
    if nested is not None:
        raise _invalid(f"Encountered list at unexpected level: {len(shape)} expected < {len(shape)}")
    return level


def _type_error(value, dtype: int) -> RequestError:
    return _invalid(f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected "
                    f"type: {tf_dtype_name(dtype)}")


def json_to_array(value, dtype: int) -> np.ndarray:
    """One tensor from its nested-list JSON value, in the signature's dtype."""
    numpy_dtype = NUMPY_BY_DTYPE.get(dtype)
    if dtype != types_pb2.DT_STRING and (numpy_dtype is None or dtype in (types_pb2.DT_HALF,)):
        # TF-Serving's AddValueToTensor has no case for these (DT_HALF among them)
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Conversion of JSON Value: {_debug(value)} to type: {tf_dtype_name(dtype)}"
                           + (" (JSON has no float16: send float32 to the signature without '_fp16', "
                              "or float16 over gRPC)" if dtype == types_pb2.DT_HALF else ""))
    shape = dense_shape(value)
    leaves = _leaves(value, shape)
    kinds = set(map(type, leaves))
    if dtype == types_pb2.DT_STRING:
        if not kinds <= {str, dict}:
            raise _type_error(next(v for v in leaves if type(v) not in (str, dict)), dtype)
        strings = np.empty(len(leaves), dtype=object)
        strings[:] = [_string_leaf(v) for v in leaves]
        return strings.reshape(shape)
    allowed = {int, float} if dtype in _FLOAT_DTYPES else {int} if dtype in _INT_DTYPES else {bool}
    if not kinds <= allowed:
        raise _type_error(next(v for v in leaves if type(v) not in allowed), dtype)
    if dtype in _INT_DTYPES and leaves:
        info = np.iinfo(numpy_dtype)
        out_of_range = next((v for v in leaves if not info.min <= v <= info.max), None)
        if out_of_range is not None:
            raise _type_error(out_of_range, dtype)
    return np.array(leaves, dtype=numpy_dtype).reshape(shape)


def _string_leaf(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if not _is_base64_object(value):
        raise _invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value[BASE64_KEY], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def _instances_to_arrays(instances, signature: SignatureSpec) -> dict[str, np.ndarray]:
    """Row format: each instance is one batch element (an object of named inputs, or the
    single input's value); the elements of each input must share one shape."""
    if not isinstance(instances, list):
        raise _invalid(f"JSON Value: {_debug(instances)} Expecting '{INSTANCES_KEY}' to be an list/array")
    if not instances:
        raise _invalid(f"No values in '{INSTANCES_KEY}' array")
    names = sorted(signature.inputs)
    as_objects = isinstance(instances[0], dict) and not _is_base64_object(instances[0])
    if not as_objects and len(names) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple input "
                       f"tensors required as per the signature: {', '.join(names)}")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        is_object = isinstance(instance, dict) and not _is_base64_object(instance)
        if is_object != as_objects:
            raise _invalid(f"Expecting {'object' if as_objects else 'value/list'} but got "
                           f"{'object' if is_object else 'list'} at item {index} of input list")
        items = instance if as_objects else {names[0]: instance}
        for name, value in items.items():
            if name not in signature.inputs:
                raise _invalid(f"Failed to process element: {index} key: {name} of 'instances' list. "
                               f"Error: JSON object: does not have named input: {name}")
            try:
                array = json_to_array(value, signature.inputs[name].dtype)
            except RequestError as err:
                raise RequestError(err.code, f"Failed to process element: {index} key: {name} of "
                                             f"'instances' list. Error: {err.message}") from None
            if rows[name] and array.shape != rows[name][0].shape:
                raise _invalid(f"Failed to process element: {index} key: {name} of 'instances' list. "
                               f"Error: Expecting shape {list(rows[name][0].shape)} but got: "
                               f"{list(array.shape)}")
            rows[name].append(array)
        if set(items) != set(names):
            raise _invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                           f"{_debug(instance)} keys must be equal to: {','.join(names)}")
    return {name: np.stack(arrays) for name, arrays in rows.items()}  # (B, ...) each


def _inputs_to_arrays(inputs, signature: SignatureSpec) -> dict[str, np.ndarray]:
    """Columnar format: the single input's whole tensor, or an object of named tensors."""
    names = sorted(signature.inputs)
    if not isinstance(inputs, dict) or _is_base64_object(inputs):
        if len(names) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple input "
                           f"tensors required as per the signature: {', '.join(names)}")
        return {names[0]: json_to_array(inputs, signature.inputs[names[0]].dtype)}
    missing = [name for name in names if name not in inputs]
    if missing:
        raise _invalid(f"Missing named input: {missing[0]} in 'inputs' object; the signature's "
                       f"inputs: {signature.describe_inputs()}")
    unknown = sorted(set(inputs) - set(names))
    if unknown:  # TF-Serving ignores them; the gRPC path refuses them, and so do we
        raise _invalid(f"unknown input(s) {unknown} in 'inputs' object for signature "
                       f"{signature.name!r}; expected {signature.describe_inputs()}")
    return {name: json_to_array(inputs[name], signature.inputs[name].dtype) for name in names}


def predict_inputs(document: dict, signature: SignatureSpec) -> tuple[dict[str, tensor_pb2.TensorProto], bool]:
    """(TensorProtos by input name, True for the row format) from a `:predict` body."""
    if INSTANCES_KEY in document and INPUTS_KEY in document:
        raise _invalid(f"JSON Value: {_debug(document)} Not formatted correctly expecting only one of "
                       f"'{INPUTS_KEY}' or '{INSTANCES_KEY}' keys to exist")
    if INSTANCES_KEY in document:
        arrays, row_format = _instances_to_arrays(document[INSTANCES_KEY], signature), True
    elif INPUTS_KEY in document:
        arrays, row_format = _inputs_to_arrays(document[INPUTS_KEY], signature), False
    else:
        raise _invalid(f"Missing '{INPUTS_KEY}' or '{INSTANCES_KEY}' key")
    return {name: ndarray_to_tensor_proto(array) for name, array in arrays.items()}, row_format


# === Response: arrays -> JSON text ===

def _value_texts(array: np.ndarray, as_bytes: bool) -> list[str]:
    """Each element of `array` as JSON text, row-major."""
    flat = array.ravel()
    if array.dtype.kind == "f":
        # float32 -> shortest text that reads back to the same float32 (numpy's repr), as
        # TF-Serving writes; float16 outputs (TF-Serving refuses them) are written the same way
        return [_NON_FINITE_TEXT.get(text, text) for text in flat.astype(str).tolist()]
    if array.dtype.kind in "iu":
        return flat.astype(str).tolist()
    if array.dtype.kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if array.dtype == object or array.dtype.kind == "S":
        if as_bytes:
            return [json.dumps({BASE64_KEY: base64.b64encode(v).decode("ascii")}) for v in flat.tolist()]
        return [json.dumps(v.decode("utf-8", errors="replace")) for v in flat.tolist()]
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"Failed to write JSON value for tensor type: {array.dtype}")


def array_to_json(array: np.ndarray, as_bytes: bool = False) -> str:
    """A tensor as nested JSON lists (a scalar as one value)."""
    array = np.asarray(array)
    if array.size == 0:
        return json.dumps(np.zeros(array.shape).tolist())
    texts = _value_texts(array, as_bytes)
    for size in reversed(array.shape):  # innermost axis first
        texts = ["[" + ",".join(texts[i:i + size]) + "]" for i in range(0, len(texts), size)]
    return texts[0]


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    return (array.dtype == object or array.dtype.kind == "S") and name.endswith(BYTES_SUFFIX)


def predict_response_json(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    """`{"predictions": ...}` (row format: one item per batch element) or `{"outputs": ...}`."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            body = array_to_json(outputs[names[0]], _is_bytes_output(names[0], outputs[names[0]]))
        else:
            body = "{" + ", ".join(f"{json.dumps(n)}: {array_to_json(outputs[n], _is_bytes_output(n, outputs[n]))}"
                                   for n in names) + "}"
        return "{" + f'"{OUTPUTS_KEY}": {body}' + "}\n"
    batch = None
    for name in names:
        if np.ndim(outputs[name]) == 0:
            raise _invalid(f"Tensor name: {name} has no shape information")
        if batch is not None and len(outputs[name]) != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {len(outputs[name])} "
                           f"expecting: {batch}")
        batch = len(outputs[name])
    items = []
    for index in range(batch):
        values = {n: array_to_json(outputs[n][index], _is_bytes_output(n, outputs[n])) for n in names}
        items.append(values[names[0]] if len(names) == 1 else
                     "{" + ", ".join(f"{json.dumps(n)}: {values[n]}" for n in names) + "}")
    return "{" + f'"{PREDICTIONS_KEY}": [' + ",\n  ".join(items) + "]}\n"
