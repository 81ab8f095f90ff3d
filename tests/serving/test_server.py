"""Export -> local PredictionService -> stock gRPC stub: numbers, versions, metadata, bad requests."""

import pathlib
import shutil
import tempfile

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from serving.client import PredictionClient
from serving.server import ModelServer
from serving.tensors import ndarray_to_tensor_proto, tensor_proto_to_ndarray
from tests.serving.toy_task import make_toy_task
from tests.test_case import TestCase
from tfbrain import export

VOLUME = (4, 4, 4, 3, 1)


def windows(batch=2, seed=1, dtype="float32"):
    return np.random.default_rng(seed).standard_normal((batch,) + VOLUME).astype(dtype)


class ServerTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.base = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_serving_"))
        cls.models = {1: make_toy_task(num_classes=3, seed=1), 2: make_toy_task(num_classes=3, seed=2)}
        for version, model in cls.models.items():
            export.export_model(model, cls.base, "toy", version, warmup=False)
        cls.server = ModelServer({"toy": cls.base / "toy"}, port=0, max_workers=4)
        cls.server.start()
        cls.channel = grpc.insecure_channel(cls.server.target)
        cls.stub = prediction_service_pb2_grpc.PredictionServiceStub(cls.channel)
        cls.model_stub = model_service_pb2_grpc.ModelServiceStub(cls.channel)
        cls.client = PredictionClient(cls.server.target, "toy", channel=cls.channel, timeout_s=30)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop(grace_s=1)
        shutil.rmtree(cls.base, ignore_errors=True)

    def request(self, x=None, signature="serving_default", name="toy"):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
        request.inputs["fmri"].CopyFrom(tf.make_tensor_proto(windows() if x is None else x))
        return request

    def assert_good_request_works(self):
        x = windows(seed=9)
        response = self.stub.Predict(self.request(x), timeout=30)
        self.assertAllClose(tensor_proto_to_ndarray(response.outputs["logits"]),
                            self.models[2](x)["logits"], atol=1e-5)

    # === Round trips ===

    def test_round_trip_float32_with_stock_stub(self):
        x = windows(batch=3)
        response = self.stub.Predict(self.request(x), timeout=30)
        self.assertEqual(response.model_spec.name, "toy")
        self.assertEqual(response.model_spec.version.value, 2)  # newest by default
        self.assertEqual(response.model_spec.signature_name, "serving_default")
        expected = self.models[2](x)["logits"].numpy()
        logits = tf.make_ndarray(response.outputs["logits"])
        self.assertLessEqual(float(np.max(np.abs(logits - expected))), 1e-5)
        self.assertAllClose(tf.make_ndarray(response.outputs["probabilities"]),
                            tf.nn.softmax(expected), atol=1e-5)

    def test_round_trip_float16_payload(self):
        x = windows(batch=3)
        fp16 = PredictionClient(self.server.target, "toy", channel=self.channel, use_fp16=True)
        request = fp16.build_request(x)
        self.assertEqual(request.model_spec.signature_name, "serving_default_fp16")
        self.assertEqual(request.inputs["fmri"].dtype, types_pb2.DT_HALF)
        self.assertEqual(len(request.inputs["fmri"].tensor_content), x.size * 2)
        outputs = fp16.predict(x)
        rounded = x.astype("float16").astype("float32")
        self.assertAllClose(outputs["logits"], self.models[2](rounded)["logits"], atol=1e-5)
        # against the float32 input: within float16's precision (rel. 2^-11 per element)
        self.assertAllClose(outputs["logits"], self.models[2](x)["logits"], atol=5e-3, rtol=5e-3)

    def test_embed_and_output_filter(self):
        x = windows()
        expected = np.mean(self.models[2].backbone(x), axis=(1, 2, 3, 4))
        self.assertAllClose(self.client.embed(x), expected, atol=1e-5)
        outputs = self.client.predict(x, output_filter=["probabilities"])
        self.assertEqual(list(outputs), ["probabilities"])

    def test_single_window_and_value_fields(self):
        x = windows(batch=1)
        self.assertEqual(self.client.predict(x[0])["logits"].shape, (1, 3))  # B=1 added
        # float_val instead of tensor_content, as JSON bridges send it
        proto = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, float_val=x.ravel().tolist(),
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in x.shape]))
        request = self.request()
        request.inputs["fmri"].CopyFrom(proto)
        response = self.stub.Predict(request, timeout=30)
        self.assertAllClose(tensor_proto_to_ndarray(response.outputs["logits"]),
                            self.models[2](x)["logits"], atol=1e-5)
        # half_val through tf.make_tensor_proto's own encoding
        request = self.request(x.astype("float16"), signature="serving_default_fp16")
        response = self.stub.Predict(request, timeout=30)
        self.assertAllClose(tensor_proto_to_ndarray(response.outputs["logits"]),
                            self.models[2](x.astype("float16").astype("float32"))["logits"], atol=1e-5)

    def test_specific_version(self):
        x = windows()
        v1 = PredictionClient(self.server.target, "toy", version=1, channel=self.channel)
        self.assertAllClose(v1.predict(x)["logits"], self.models[1](x)["logits"], atol=1e-5)
        self.assertAllClose(self.client.predict(x)["logits"], self.models[2](x)["logits"], atol=1e-5)
        self.assertEqual(v1.status(), [(1, "AVAILABLE")])
        self.assertIn((2, "AVAILABLE"), self.client.status())

    def test_metadata(self):
        signatures = self.client.signatures()
        self.assertEqual(sorted(signatures),
                         ["embed", "embed_fp16", "serving_default", "serving_default_fp16"])
        spec = signatures["serving_default_fp16"].inputs["fmri"]
        self.assertEqual((spec.dtype, spec.shape), (types_pb2.DT_HALF, (-1, *VOLUME)))
        self.assertEqual(sorted(signatures["serving_default"].outputs), ["logits", "probabilities"])
        self.assertEqual(self.client.window_shape(), VOLUME)

    # === Bad requests: each answers its status, then the server still serves ===

    def assert_status(self, call, code, pattern):
        with self.assertRaises(grpc.RpcError) as caught:
            call()
        self.assertEqual(caught.exception.code(), code, caught.exception.details())
        self.assertRegex(caught.exception.details(), pattern)
        self.assert_good_request_works()

    def test_not_found(self):
        not_found = grpc.StatusCode.NOT_FOUND
        self.assert_status(lambda: self.stub.Predict(self.request(name="nope")), not_found, "'nope'.*served")
        request = self.request()
        request.model_spec.version.CopyFrom(wrappers_pb2.Int64Value(value=5))
        self.assert_status(lambda: self.stub.Predict(request), not_found, r"version 5.*\[1, 2\]")
        request = self.request()
        request.model_spec.version_label = "stable"  # TF-Serving: INVALID_ARGUMENT for an unknown label
        self.assert_status(lambda: self.stub.Predict(request), grpc.StatusCode.INVALID_ARGUMENT,
                           "Unrecognized servable version label: 'stable'.*none")
        self.assert_status(lambda: self.stub.Predict(self.request(signature="classify")), not_found,
                           "'classify' not found.*serving_default")
        status_request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="nope"))
        self.assert_status(lambda: self.model_stub.GetModelStatus(status_request), not_found, "nope")

    def test_invalid_arguments(self):
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        spec = r"expects input 'fmri': float32 \(DT_FLOAT\), shape \[-1, 4, 4, 4, 3, 1\]"
        cases = {
            "float64": (self.request(windows().astype("float64")), spec + ".*DT_DOUBLE"),
            "float16 to fp32": (self.request(windows(dtype="float16")), "DT_HALF.*serving_default_fp16"),
            "float32 to fp16": (self.request(windows(), signature="embed_fp16"), "float16.*'embed'"),
            "int32": (self.request(np.zeros((1, *VOLUME), "int32")), "DT_INT32"),
            "rank": (self.request(windows()[..., 0]), spec + ".*rank 5.*rank must be 6"),
            "shape": (self.request(np.zeros((1, 4, 4, 4, 2, 1), "float32")), spec + r".*axis 4 is 2"),
            "batch 0": (self.request(np.zeros((0, *VOLUME), "float32")), "axis 0 is 0"),
        }
        missing = self.request()
        del missing.inputs["fmri"]
        cases["missing"] = (missing, r"missing input\(s\) \['fmri'\].*expected 'fmri': float32")
        extra = self.request()
        extra.inputs["mask"].CopyFrom(tf.make_tensor_proto(windows()))
        cases["unknown input"] = (extra, r"unknown input\(s\) \['mask'\]")
        truncated = self.request()
        truncated.inputs["fmri"].tensor_content = truncated.inputs["fmri"].tensor_content[:-4]
        cases["short content"] = (truncated, "tensor_content holds")
        unnamed = self.request(name="")
        cases["empty model name"] = (unnamed, "model_spec.name is empty")
        bad_filter = self.request()
        bad_filter.output_filter.append("scores")
        cases["output filter"] = (bad_filter, r"output_filter names \['scores'\]")
        for label, (request, pattern) in cases.items():
            with self.subTest(label):
                self.assert_status(lambda: self.stub.Predict(request, timeout=30), invalid, pattern)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="toy"), metadata_field=["graph"])
        self.assert_status(lambda: self.stub.GetModelMetadata(metadata), invalid, "not supported")

    def test_unimplemented_methods(self):
        from tensorflow_serving.apis import classification_pb2
        request = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="toy"))
        self.assert_status(lambda: self.stub.Classify(request), grpc.StatusCode.UNIMPLEMENTED, ".")


class TensorsTest(TestCase):
    def test_round_trip_and_repeated_fields(self):
        for dtype in ("float32", "float16", "int64", "float64"):
            x = np.arange(24, dtype=dtype).reshape(2, 3, 4)
            proto = ndarray_to_tensor_proto(x)
            self.assertEqual(tf.make_ndarray(proto).tolist(), x.tolist())
            self.assertEqual(tensor_proto_to_ndarray(tf.make_tensor_proto(x)).tolist(), x.tolist())
        half = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_HALF,
            half_val=np.array([1.5, -2.0], "float16").view("uint16").astype("int32").tolist(),
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
        self.assertEqual(tensor_proto_to_ndarray(half).tolist(), [1.5, -2.0])
        broadcast = tf.make_tensor_proto(np.float32(0.5), shape=[2, 2])
        self.assertEqual(tensor_proto_to_ndarray(broadcast).tolist(), [[0.5, 0.5], [0.5, 0.5]])
