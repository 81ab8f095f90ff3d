"""Serving limits (issue 14): a batch cap checked before allocation, a port in use refused,
an incomplete newest version skipped."""

import pathlib
import shutil
import socket
import tempfile

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from serving import server as server_lib
from serving.server import ModelRepository, ModelServer, default_max_batch
from tests.serving.toy_task import make_toy_task
from tfbrain import export

VOLUME = (4, 4, 4, 3, 1)


@pytest.fixture(scope="module")
def base():
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_limits_"))
    export.export_model(make_toy_task(num_classes=3, seed=1), folder, "toy", 1, warmup=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def empty_request(batch: int) -> predict_pb2.PredictRequest:
    """A few dozen bytes that declare `batch` windows and carry no values (TF zero-fills)."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="toy"))
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in (batch,) + VOLUME]))
    request.inputs["fmri"].CopyFrom(proto)
    return request


def test_batch_cap_is_checked_before_decoding(base, monkeypatch):
    assert default_max_batch(base / "toy") == export.DEFAULT_BATCHING["max_batch_size"]
    decoded = []
    original = server_lib.validate_inputs.__globals__["_check_tensor"]
    monkeypatch.setitem(server_lib.validate_inputs.__globals__, "_check_tensor",
                        lambda *a: decoded.append(1) or original(*a))
    with ModelServer({"toy": base / "toy"}, port=0, max_batch=3) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = empty_request(2048)
            assert request.ByteSize() < 100
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "batch size 2048, over the server's maximum 3 (--max-batch)" in info.value.details()
            assert not decoded  # refused from the shape alone
            response = stub.Predict(empty_request(3), timeout=30)
            assert tuple(response.outputs["logits"].tensor_shape.dim[0].size for _ in [0]) == (3,)


def test_a_port_in_use_is_refused(base):
    with ModelServer({"toy": base / "toy"}, port=0, preload=False) as first:
        second = ModelServer({"toy": base / "toy"}, port=first.port, preload=False)
        with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{first.port}: the port is in use"):
            second.start()
        second.stop(grace_s=0)
    # a port held by something else (a plain socket) too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        blocked = ModelServer({"toy": base / "toy"}, port=sock.getsockname()[1], preload=False)
        with pytest.raises(OSError, match="the port is in use"):
            blocked.start()
        blocked.stop(grace_s=0)


def test_serve_cli_port_in_use_is_one_line(base, capsys):
    from tfbrain.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        code = main(["serve", str(base / "toy"), "--port", str(sock.getsockname()[1])])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tfbrain serve: error: could not bind") and "port is in use" in err[-1]


def test_incomplete_newest_version_is_skipped(base, caplog):
    copying = base / "toy" / "2"
    shutil.copytree(base / "toy" / "1", copying)
    shutil.rmtree(copying / "variables")  # a copy that has not reached variables/ yet
    try:
        repository = ModelRepository({"toy": base / "toy"})
        assert repository.versions("toy") == [1]
        assert repository.get(model_pb2.ModelSpec(name="toy")).version == 1
        assert "skipping incomplete version folder" in caplog.text
    finally:
        shutil.rmtree(copying)
