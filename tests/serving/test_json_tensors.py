"""TF-Serving's JSON tensor encoding (serving.json_tensors), without a server: dtypes, b64,
row and columnar formats, exact float text, and the errors TF-Serving gives."""

import base64
import json

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving import json_tensors
from serving.json_tensors import array_to_json, json_to_array, predict_inputs, predict_response_json
from serving.tensors import tensor_proto_to_ndarray
from serving.validation import RequestError, SignatureSpec, TensorSpec

TWO_INPUTS = SignatureSpec("streams", {"audio": TensorSpec("audio", types_pb2.DT_FLOAT, (-1, 3)),
                                       "ids": TensorSpec("ids", types_pb2.DT_INT64, (-1,))}, {})


def refused(call, pattern, code=grpc.StatusCode.INVALID_ARGUMENT):
    with pytest.raises(RequestError, match=pattern) as info:
        call()
    assert info.value.code == code


def test_values_take_the_signature_dtype():
    floats = json_to_array([[1, 2.5], [float("nan"), float("-inf")]], types_pb2.DT_FLOAT)
    assert floats.dtype == np.float32 and floats.shape == (2, 2)
    assert floats[0].tolist() == [1.0, 2.5] and np.isnan(floats[1, 0]) and floats[1, 1] == -np.inf
    assert json_to_array(3, types_pb2.DT_DOUBLE).shape == ()  # a scalar has no dimension
    assert json_to_array([2**40], types_pb2.DT_INT64).tolist() == [2**40]
    assert json_to_array([[True], [False]], types_pb2.DT_BOOL).tolist() == [[True], [False]]
    refused(lambda: json_to_array([1.5], types_pb2.DT_INT32),
            "JSON Value: 1.5 Type: Number is not of expected type: int32")
    refused(lambda: json_to_array([2**31], types_pb2.DT_INT32), "2147483648 .*int32")
    refused(lambda: json_to_array([True], types_pb2.DT_FLOAT), "Type: True is not of expected type: float")
    refused(lambda: json_to_array([1], types_pb2.DT_BOOL), "not of expected type: bool")
    refused(lambda: json_to_array(["1.5"], types_pb2.DT_FLOAT), 'JSON Value: "1.5" Type: String')
    refused(lambda: json_to_array([{"b64": "AA=="}], types_pb2.DT_FLOAT), "Type: Object")


def test_float16_has_no_json_form():
    # TF-Serving's AddValueToTensor has no DT_HALF case: UNIMPLEMENTED
    refused(lambda: json_to_array([0.5], types_pb2.DT_HALF), "to type: half.*JSON has no float16",
            grpc.StatusCode.UNIMPLEMENTED)


def test_strings_and_base64():
    strings = json_to_array([{"b64": base64.b64encode(b"\x00\xff").decode()}, "caf\u00e9"], types_pb2.DT_STRING)
    assert strings.dtype == object and strings.tolist() == [b"\x00\xff", "caf\u00e9".encode()]
    refused(lambda: json_to_array([{"b64": "%%%"}], types_pb2.DT_STRING), "Unable to base64 decode")
    refused(lambda: json_to_array([{"b64": "AA==", "x": 1}], types_pb2.DT_STRING), "not formatted correctly for base64")
    refused(lambda: json_to_array([1], types_pb2.DT_STRING), "not of expected type: string")


def test_ragged_and_misnested_lists():
    refused(lambda: json_to_array([[1, 2], [3]], types_pb2.DT_FLOAT),
            "Encountered list at unexpected size: 1 at level: 1 expected size: 2")
    refused(lambda: json_to_array([[1], 2], types_pb2.DT_FLOAT),
            "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2")
    refused(lambda: json_to_array([[1, [2]]], types_pb2.DT_FLOAT), "Encountered list at unexpected level")


def test_row_and_columnar_requests_with_two_inputs():
    rows = {"instances": [{"audio": [1, 2, 3], "ids": 7}, {"audio": [4, 5, 6], "ids": 8}]}
    columns = {"inputs": {"audio": [[1, 2, 3], [4, 5, 6]], "ids": [7, 8]}}
    row_protos, row_format = predict_inputs(rows, TWO_INPUTS)
    column_protos, column_format = predict_inputs(columns, TWO_INPUTS)
    assert (row_format, column_format) == (True, False)
    for protos in (row_protos, column_protos):
        assert tensor_proto_to_ndarray(protos["audio"]).tolist() == [[1, 2, 3], [4, 5, 6]]
        assert protos["audio"].dtype == types_pb2.DT_FLOAT
        assert tensor_proto_to_ndarray(protos["ids"]).tolist() == [7, 8]
        assert protos["ids"].dtype == types_pb2.DT_INT64
    refused(lambda: predict_inputs({"instances": [[1, 2, 3]]}, TWO_INPUTS),
            "instances is a plain list, but expecting list of objects")
    refused(lambda: predict_inputs({"inputs": [[1, 2, 3]]}, TWO_INPUTS), "inputs is a plain value/list")
    refused(lambda: predict_inputs({"instances": [{"audio": [1, 2, 3]}]}, TWO_INPUTS),
            "element: 0 of 'instances' list.*keys must be equal to: audio,ids")
    refused(lambda: predict_inputs({"instances": [rows["instances"][0], [1, 2, 3]]}, TWO_INPUTS),
            "Expecting object but got list at item 1")
    refused(lambda: predict_inputs({"instances": {"audio": [1, 2, 3]}}, TWO_INPUTS),
            "Expecting 'instances' to be an list/array")


def test_request_document_errors():
    refused(lambda: json_tensors.parse_json_object(b""), "The document is empty")
    refused(lambda: json_tensors.parse_json_object(b'{"a": }'), "JSON Parse error: Expecting value at offset: 6")
    refused(lambda: json_tensors.parse_json_object(b"\xff"), "Invalid encoding")
    refused(lambda: json_tensors.parse_json_object(b"[1]"), "Is not object")
    assert json_tensors.parse_json_object(b'{"inputs": [NaN, Infinity]}')["inputs"][1] == float("inf")
    assert json_tensors.signature_name_of({}) == ""
    refused(lambda: json_tensors.signature_name_of({"signature_name": 3}), "must be a string value")


def test_float_text_is_short_and_exact():
    values = np.random.default_rng(0).standard_normal(1000).astype("float32") * 10.0 ** np.arange(-20, 30, 0.05)[:1000]
    text = array_to_json(values.astype("float32"))
    assert np.array_equal(np.array(json.loads(text), "float32"), values.astype("float32"))
    assert array_to_json(np.float32(0.2)) == "0.2"  # not 0.20000000298023224
    assert array_to_json(np.array([0.1 + 0.2])) == "[0.30000000000000004]"  # float64 keeps its digits
    assert array_to_json(np.array([np.nan, np.inf, -np.inf], "float32")) == "[NaN,Infinity,-Infinity]"
    assert array_to_json(np.array([[1, -2]], "int64")) == "[[1,-2]]"
    assert array_to_json(np.array([True, False])) == "[true,false]"
    assert array_to_json(np.zeros((2, 0), "float32")) == "[[], []]"


def test_response_formats():
    outputs = {"logits": np.array([[0.5, -1.0], [2.0, 0.25]], "float32"),
               "label_bytes": np.array([b"\x00a", b"b"], dtype=object),
               "label": np.array([b"x", b"y"], dtype=object)}
    rows = json.loads(predict_response_json(outputs, row_format=True))
    assert rows == {"predictions": [
        {"label": "x", "label_bytes": {"b64": base64.b64encode(b"\x00a").decode()}, "logits": [0.5, -1.0]},
        {"label": "y", "label_bytes": {"b64": "Yg=="}, "logits": [2.0, 0.25]}]}
    columns = json.loads(predict_response_json(outputs, row_format=False))
    assert columns["outputs"]["logits"] == [[0.5, -1.0], [2.0, 0.25]]
    assert columns["outputs"]["label_bytes"] == [{"b64": "AGE="}, {"b64": "Yg=="}]
    single = {"embedding": outputs["logits"]}
    assert json.loads(predict_response_json(single, row_format=True)) == {"predictions": [[0.5, -1.0], [2.0, 0.25]]}
    assert json.loads(predict_response_json(single, row_format=False)) == {"outputs": [[0.5, -1.0], [2.0, 0.25]]}
    refused(lambda: predict_response_json({"a": np.float32(1)}, row_format=True), "has no shape information")
    refused(lambda: predict_response_json({"a": np.zeros(2), "b": np.zeros(3)}, row_format=True),
            "inconsistent batch size")
