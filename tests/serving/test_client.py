"""Client behaviour: retries with backoff, deadlines, REST body; the predict and serve CLIs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from concurrent import futures

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client import PredictionClient, rest_predict_body
from serving.server import ModelServer
from serving.tensors import ndarray_to_tensor_proto
from serving.windows import windows_from_nifti
from tests.serving.toy_task import make_toy_task
from tests.test_case import REPO_ROOT, TestCase
from tfbrain import export

VOLUME = (4, 4, 4, 3, 1)


class FlakyServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Fails the first `failures` calls with `code`, sleeps `delay_s`, then answers."""

    def __init__(self, failures=0, code=grpc.StatusCode.UNAVAILABLE, delay_s=0.0):
        self.failures, self.code, self.delay_s, self.calls = failures, code, delay_s, 0

    def Predict(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(self.code, "try again")
        time.sleep(self.delay_s)
        response = predict_pb2.PredictResponse()
        response.outputs["logits"].CopyFrom(ndarray_to_tensor_proto(np.ones((1, 1), "float32")))
        return response


def start_fake(servicer):
    server = grpc.server(futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class ClientTest(TestCase):
    def test_retries_then_succeeds(self):
        servicer = FlakyServicer(failures=2)
        server, target = start_fake(servicer)
        self.addCleanup(server.stop, None)
        with PredictionClient(target, "toy", retries=2, backoff_s=0.01) as client:
            self.assertEqual(client.predict(np.zeros((1, *VOLUME)))["logits"].tolist(), [[1.0]])
        self.assertEqual(servicer.calls, 3)

    def test_gives_up_after_retries_and_never_retries_bad_requests(self):
        servicer = FlakyServicer(failures=10)
        server, target = start_fake(servicer)
        self.addCleanup(server.stop, None)
        with PredictionClient(target, "toy", retries=1, backoff_s=0.01) as client:
            with self.assertRaises(grpc.RpcError) as caught:
                client.predict(np.zeros((1, *VOLUME)))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(servicer.calls, 2)
        servicer = FlakyServicer(failures=10, code=grpc.StatusCode.INVALID_ARGUMENT)
        server, target = start_fake(servicer)
        self.addCleanup(server.stop, None)
        with PredictionClient(target, "toy", retries=3, backoff_s=0.01) as client:
            with self.assertRaises(grpc.RpcError):
                client.predict(np.zeros((1, *VOLUME)))
        self.assertEqual(servicer.calls, 1)

    def test_deadline(self):
        servicer = FlakyServicer(delay_s=1.0)
        server, target = start_fake(servicer)
        self.addCleanup(server.stop, None)
        with PredictionClient(target, "toy", timeout_s=0.2, retries=0) as client:
            with self.assertRaises(grpc.RpcError) as caught:
                client.predict(np.zeros((1, *VOLUME)))
        self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_rest_body(self):
        body = rest_predict_body(np.zeros((2, 2, 2, 2, 2, 1)))
        self.assertEqual(body["signature_name"], "serving_default")
        self.assertEqual(len(body["instances"]), 2)
        self.assertEqual(np.shape(body["instances"][0]["fmri"]), (2, 2, 2, 2, 1))
        json.dumps(body)

    def test_windows_from_nifti(self):
        from tests.tfrecords_tools.helpers import synthetic_run

        path = pathlib.Path(self.get_temp_dir()) / "run.nii.gz"
        synthetic_run(str(path), num_frames=7)
        windows = windows_from_nifti(path, (4, 4, 4, 3, 1))
        self.assertEqual(windows.shape, (2, 4, 4, 4, 3, 1))  # 7 frames -> 2 windows of 3
        self.assertTrue(np.isfinite(windows).all())
        with self.assertRaisesRegex(ValueError, "frames"):
            windows_from_nifti(path, (4, 4, 4, 8, 1))


class CLITest(TestCase):
    def setUp(self):
        super().setUp()
        self.base = pathlib.Path(self.get_temp_dir())
        self.model = make_toy_task(num_classes=2)
        export.export_model(self.model, self.base, "toy", warmup=False)

    def test_predict_cli(self):
        from tfbrain import cli
        x = np.random.default_rng(0).standard_normal((3, *VOLUME)).astype("float32")
        np.save(self.base / "windows.npy", x)
        with ModelServer({"toy": self.base / "toy"}, port=0) as server:
            code = cli.main(["predict", str(self.base / "windows.npy"), "--target", server.target,
                             "--model", "toy", "--fp16", "--batch-size", "2",
                             "--output", str(self.base / "out.npz")])
        self.assertEqual(code, 0)
        with np.load(self.base / "out.npz") as out:
            self.assertAllClose(out["logits"], self.model(x)["logits"], atol=5e-3, rtol=5e-3)
            self.assertEqual(sorted(out.files), ["logits", "probabilities"])

    def test_predict_cli_from_converted_dataset_and_nifti(self):
        import tfrecords_tools
        from tests.tfrecords_tools.helpers import synthetic_run
        from tfbrain import cli

        nifti = self.base / "sub-01.nii.gz"
        synthetic_run(str(nifti), num_frames=7)
        config = tfrecords_tools.PreprocessConfig(target_shape=(4, 4, 4), min_frames=3)
        tfrecords_tools.convert(tfrecords_tools.runs_from_files([str(nifti)]), str(self.base / "dataset"),
                                config=config, workers=0, progress=False)
        expected_windows = tfrecords_tools.windows(str(self.base / "dataset"), window=3, shuffle=False,
                                                   seed=0, dtype="float32")
        expected_windows = np.stack([w for w, _, _ in expected_windows.as_numpy_iterator()])
        with ModelServer({"toy": self.base / "toy"}, port=0) as server:
            for name, source in (("dataset", self.base / "dataset"), ("nifti", nifti)):
                code = cli.main(["predict", str(source), "--target", server.target, "--model", "toy",
                                 "--output", str(self.base / f"{name}.npz")])
                self.assertEqual(code, 0)
        with np.load(self.base / "dataset.npz") as out:
            self.assertEqual(out["logits"].shape, (2, 2))  # 7 frames -> 2 windows of 3
            self.assertAllClose(out["logits"], self.model(expected_windows)["logits"], atol=1e-5)
        with np.load(self.base / "nifti.npz") as out, np.load(self.base / "dataset.npz") as ref:
            self.assertEqual(out["logits"].shape, (2, 2))
            # a NIfTI goes through tfbrain prepare's own preprocessing: the same windows
            self.assertAllClose(out["logits"], ref["logits"], atol=1e-6)

    def test_serve_cli_stops_on_sigterm(self):
        ready = self.base / "port"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", str(self.base / "toy"), "--port", "0",
             "--ready-file", str(ready)], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while not ready.exists() and process.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            self.assertTrue(ready.exists(), "server did not start")
            target = f"127.0.0.1:{ready.read_text()}"
            with PredictionClient(target, "toy") as client:
                self.assertEqual(client.predict(np.zeros((1, *VOLUME)))["logits"].shape, (1, 2))
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        self.assertEqual(process.returncode, 0, output[-2000:])
        self.assertIn("server stopped", output)
