"""TF-Serving's REST API on the local server, with plain HTTP clients (urllib, http.client):
the same numbers as gRPC, versions and labels, status and metadata JSON, bad requests."""

import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from serving.client import PredictionClient
from serving.rest import RestServer
from serving.rest_client import RestError, RestPredictionClient
from serving.server import ModelServer
from tests.serving.toy_task import make_toy_task
from tests.test_case import REPO_ROOT, TestCase
from tfbrain import export

VOLUME = (4, 4, 4, 3, 1)
MAX_BODY_BYTES = 100_000  # a batch of 4 toy windows is about 30 kB of JSON


def windows(batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch,) + VOLUME).astype("float32")


class RestServerTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.base = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_rest_"))
        cls.models = {1: make_toy_task(num_classes=3, seed=1), 2: make_toy_task(num_classes=3, seed=2)}
        for version, model in cls.models.items():
            export.export_model(model, cls.base, "toy", version, warmup=False)
        cls.server = ModelServer({"toy": cls.base / "toy"}, port=0, rest_port=0, max_workers=4,
                                 version_labels={"toy": {"stable": 1, "canary": 2}},
                                 rest_max_body_bytes=MAX_BODY_BYTES)
        cls.server.start()
        cls.url = cls.server.rest.url
        cls.grpc = PredictionClient(cls.server.target, "toy", timeout_s=30)

    @classmethod
    def tearDownClass(cls):
        cls.grpc.close()
        cls.server.stop(grace_s=1)
        shutil.rmtree(cls.base, ignore_errors=True)

    def call(self, method, path, body=None):
        """(HTTP status, parsed JSON) with urllib; errors are answers, not exceptions."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self.assertEqual(response.headers["Content-Type"], "application/json")
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            self.assertEqual(err.headers["Content-Type"], "application/json")
            return err.code, json.loads(err.read())

    # === Predict: the same numbers as gRPC ===

    def test_row_format_equals_grpc(self):
        x = windows(batch=3)
        status, answer = self.call("POST", "/v1/models/toy:predict", {"instances": x.tolist()})
        self.assertEqual(status, 200, answer)
        predictions = answer["predictions"]
        self.assertEqual(len(predictions), 3)
        self.assertEqual(sorted(predictions[0]), ["logits", "probabilities"])
        expected = self.grpc.predict(x)
        for name in ("logits", "probabilities"):
            np.testing.assert_array_equal(np.array([p[name] for p in predictions], "float32"), expected[name])
        self.assertAllClose(expected["logits"], self.models[2](x)["logits"], atol=1e-5)  # newest version
        # instances as objects of named inputs give the same rows
        status, named = self.call("POST", "/v1/models/toy:predict",
                                  {"instances": [{"fmri": w} for w in x.tolist()]})
        self.assertEqual((status, named), (200, answer))

    def test_columnar_format_equals_grpc(self):
        x = windows(batch=2, seed=4)
        status, answer = self.call("POST", "/v1/models/toy:predict",
                                   {"signature_name": "serving_default", "inputs": {"fmri": x.tolist()}})
        self.assertEqual(status, 200, answer)
        expected = self.grpc.predict(x)
        self.assertEqual(sorted(answer["outputs"]), ["logits", "probabilities"])
        for name in ("logits", "probabilities"):
            np.testing.assert_array_equal(np.array(answer["outputs"][name], "float32"), expected[name])
        # the single input may be given bare
        self.assertEqual(self.call("POST", "/v1/models/toy:predict", {"inputs": x.tolist()}), (200, answer))

    def test_single_output_signature_leaves_the_name_out(self):
        x = windows(batch=2, seed=5)
        expected = self.grpc.embed(x)
        status, answer = self.call("POST", "/v1/models/toy:predict",
                                   {"signature_name": "embed", "inputs": x.tolist()})
        self.assertEqual(status, 200, answer)
        np.testing.assert_array_equal(np.array(answer["outputs"], "float32"), expected)
        status, answer = self.call("POST", "/v1/models/toy:predict",
                                   {"signature_name": "embed", "instances": x.tolist()})
        np.testing.assert_array_equal(np.array(answer["predictions"], "float32"), expected)

    def test_floats_are_written_short_and_exact(self):
        # the shortest text that reads back to the same float32, as TF-Serving writes it
        x = windows(batch=1, seed=6)
        request = urllib.request.Request(self.url + "/v1/models/toy:predict", method="POST",
                                         data=json.dumps({"inputs": x.tolist()}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
        logits = self.grpc.predict(x)["logits"]
        for value in logits.ravel():
            self.assertIn(str(value), text)  # numpy's shortest float32 text, e.g. 0.03360232
            self.assertNotIn(repr(value.item()), text)  # not the float64 one, 0.033602319657802582
        np.testing.assert_array_equal(np.array(json.loads(text)["outputs"]["logits"], "float32"), logits)

    # === Versions, labels, status, metadata ===

    def test_versions_and_labels(self):
        x = windows(seed=7)
        for path, version in (("/versions/1", 1), ("/versions/2", 2), ("/labels/stable", 1),
                              ("/labels/canary", 2), ("", 2)):
            with self.subTest(path):
                status, answer = self.call("POST", f"/v1/models/toy{path}:predict", {"inputs": x.tolist()})
                self.assertEqual(status, 200, answer)
                self.assertAllClose(answer["outputs"]["logits"], self.models[version](x)["logits"], atol=1e-5)
        # the same label over gRPC gives the same numbers: one lookup behind both
        with PredictionClient(self.server.target, "toy", version_label="stable") as stable:
            self.assertEqual(stable.model_spec().version_label, "stable")
            expected = stable.predict(x)["logits"]
            self.assertEqual(stable.status(), [(1, "AVAILABLE")])
        _, answer = self.call("POST", "/v1/models/toy/labels/stable:predict", {"inputs": x.tolist()})
        np.testing.assert_array_equal(np.array(answer["outputs"]["logits"], "float32"), expected)
        self.assertAllClose(expected, self.models[1](x)["logits"], atol=1e-5)

    def test_status(self):
        status, answer = self.call("GET", "/v1/models/toy/versions/1")
        self.assertEqual(status, 200)
        self.assertEqual(answer, {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
        status, answer = self.call("GET", "/v1/models/toy")  # every loaded version
        self.assertEqual(status, 200)
        self.assertIn("2", [s["version"] for s in answer["model_version_status"]])
        self.assertEqual(self.call("GET", "/v1/models/toy/labels/stable")[1]["model_version_status"][0]["version"],
                         "1")
        self.assertEqual(self.call("GET", "/v1/MODELS/toy/Versions/1")[0], 200)  # paths match case-insensitively

    def test_metadata(self):
        status, answer = self.call("GET", "/v1/models/toy/metadata")
        self.assertEqual(status, 200)
        self.assertEqual(answer["model_spec"], {"name": "toy", "signature_name": "", "version": "2"})
        signatures = answer["metadata"]["signature_def"]["signature_def"]
        self.assertEqual(sorted(signatures), ["embed", "embed_fp16", "serving_default", "serving_default_fp16"])
        fmri = signatures["serving_default"]["inputs"]["fmri"]
        self.assertEqual(fmri["dtype"], "DT_FLOAT")
        self.assertEqual([d["size"] for d in fmri["tensor_shape"]["dim"]], ["-1", "4", "4", "4", "3", "1"])
        self.assertEqual(signatures["serving_default_fp16"]["inputs"]["fmri"]["dtype"], "DT_HALF")
        self.assertEqual(signatures["serving_default"]["method_name"], "tensorflow/serving/predict")
        self.assertEqual(self.call("GET", "/v1/models/toy/versions/1/metadata")[1]["model_spec"]["version"], "1")

    # === Bad requests: each answers its status and {"error": ...}, then the server still serves ===

    def assert_error(self, method, path, body, status, pattern):
        got_status, answer = self.call(method, path, body)
        self.assertEqual(got_status, status, answer)
        self.assertEqual(list(answer), ["error"])
        self.assertRegex(answer["error"], pattern)

    def assert_still_serves(self):
        x = windows(seed=9)
        status, answer = self.call("POST", "/v1/models/toy:predict", {"inputs": x.tolist()})
        self.assertEqual(status, 200, answer)
        self.assertAllClose(answer["outputs"]["logits"], self.models[2](x)["logits"], atol=1e-5)

    def test_bad_requests(self):
        x = windows().tolist()
        predict = "/v1/models/toy:predict"
        spec = r"expects input 'fmri': float32 \(DT_FLOAT\), shape \[-1, 4, 4, 4, 3, 1\]"
        cases = {
            "empty body": ("POST", predict, b"", 400, "JSON Parse error: The document is empty"),
            "malformed JSON": ("POST", predict, b"instances = [1, 2]", 400, "JSON Parse error: .* at offset: 0"),
            "not an object": ("POST", predict, [1, 2], 400, "Is not object"),
            "no tensors": ("POST", predict, {"signature_name": "embed"}, 400, "Missing 'inputs' or 'instances' key"),
            "both formats": ("POST", predict, {"inputs": x, "instances": x}, 400,
                             "only one of 'inputs' or 'instances'"),
            "empty instances": ("POST", predict, {"instances": []}, 400, "No values in 'instances'"),
            "signature not a string": ("POST", predict, {"signature_name": 100, "inputs": x}, 400,
                                       "'signature_name' key must be a string value"),
            "wrong shape": ("POST", predict, {"inputs": np.zeros((1, 4, 4, 4, 2, 1)).tolist()}, 400,
                            spec + r"; got shape \[1, 4, 4, 4, 2, 1\] \(axis 4 is 2\)"),
            "wrong rank": ("POST", predict, {"instances": [1.0, 2.0]}, 400, spec + ".*rank must be 6"),
            "ragged list": ("POST", predict, {"inputs": [x[0], x[1][:3]]}, 400,
                            "Encountered list at unexpected size: 3 at level: 1 expected size: 4"),
            "ragged instances": ("POST", predict, {"instances": [x[0], np.zeros((4, 4, 4, 2, 1)).tolist()]}, 400,
                                 r"element: 1 key: fmri.*Expecting shape \[4, 4, 4, 3, 1\] but got: \[4, 4, 4, 2, 1\]"),
            "strings for floats": ("POST", predict, {"instances": ["x", "y"]}, 400,
                                   'JSON Value: "x" Type: String is not of expected type: float'),
            "bools for floats": ("POST", predict, {"inputs": [[[[[[True]]]]]]}, 400,
                                 "Type: True is not of expected type: float"),
            "float16 signature": ("POST", predict, {"signature_name": "serving_default_fp16", "inputs": x}, 501,
                                  "to type: half.*JSON has no float16"),
            "unknown input": ("POST", predict, {"inputs": {"fmri": x, "mask": x}}, 400,
                              r"unknown input\(s\) \['mask'\]"),
            "missing input": ("POST", predict, {"inputs": {"mask": x}}, 400, "Missing named input: fmri"),
            "unknown instance key": ("POST", predict, {"instances": [{"mask": x[0]}]}, 400,
                                     "does not have named input: mask"),
            "batch over the cap": ("POST", predict, {"inputs": windows(batch=5).tolist()}, 400,
                                   r"batch size 5, over the server's maximum 4 \(--max-batch\)"),
            "unknown model": ("POST", "/v1/models/nope:predict", {"inputs": x}, 404, "'nope' is not served"),
            "unknown version": ("POST", "/v1/models/toy/versions/7:predict", {"inputs": x}, 404,
                                r"version 7 does not exist; versions on disk: \[1, 2\]"),
            "unknown label": ("POST", "/v1/models/toy/labels/beta:predict", {"inputs": x}, 400,
                              "Unrecognized servable version label: 'beta'.*canary=2, stable=1"),
            "unknown signature": ("POST", predict, {"signature_name": "classify", "inputs": x}, 400,
                                  "Serving signature name: 'classify' not found"),
            "classify on a predict signature": ("POST", "/v1/models/toy:classify", {"examples": [{"x": 1}]}, 400,
                                                "Expected classification signature method_name to be "
                                                "tensorflow/serving/classify. Was: tensorflow/serving/predict"),
            "regress on a predict signature": ("POST", "/v1/models/toy/versions/1:regress", {"examples": []}, 400,
                                               "Expected regression signature method_name"),
            "version overflow": ("POST", f"/v1/models/toy/versions/{2**64}:predict", {"inputs": x}, 400,
                                 "Failed to convert version"),
            "no model name": ("GET", "/v1/models", None, 400, "Missing model name in request."),
            "unknown path under v1": ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
            "predict with GET": ("GET", predict, None, 400, "Malformed request"),
            "metadata with POST": ("POST", "/v1/models/toy/metadata", {}, 400, "Malformed request"),
            "version and label": ("POST", "/v1/models/toy/versions/1/labels/stable:predict", {"inputs": x}, 400,
                                  "Malformed request"),
            "unknown method": ("DELETE", "/v1/models/toy", None, 400, "Malformed request: DELETE"),
            "outside v1": ("GET", "/index.html", None, 404, "under /v1/models/NAME"),
            "a method the stdlib refuses": ("OPTIONS", "/v1/models/toy", None, 501, "Unsupported method"),
        }
        for label, (method, path, body, status, pattern) in cases.items():
            with self.subTest(label):
                self.assert_error(method, path, body, status, pattern)
        self.assert_still_serves()

    def test_body_over_the_limit_is_refused_before_reading(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.rest.port, timeout=30)
        try:
            connection.putrequest("POST", "/v1/models/toy:predict")
            connection.putheader("Content-Length", str(10**9))  # declared, never sent
            connection.endheaders()
            response = connection.getresponse()
            self.assertEqual(response.status, 413)
            self.assertEqual(response.getheader("Connection"), "close")
            message = json.loads(response.read())["error"]
        finally:
            connection.close()
        self.assertIn(f"request body of 1000000000 bytes is over the REST limit of {MAX_BODY_BYTES} bytes",
                      message)
        # a body over the limit that is sent whole: the same answer, read by the client
        too_big = {"inputs": windows(batch=4).tolist(), "padding": "x" * MAX_BODY_BYTES}
        self.assert_error("POST", "/v1/models/toy:predict", too_big, 413, "over the REST limit")
        # Expect: 100-continue (curl, for bodies over 1 MB): refused before the body is invited
        connection = http.client.HTTPConnection("127.0.0.1", self.server.rest.port, timeout=30)
        try:
            connection.putrequest("POST", "/v1/models/toy:predict")
            connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
            connection.putheader("Expect", "100-continue")
            connection.endheaders()
            response = connection.getresponse()
            self.assertEqual(response.status, 413)  # not 100 Continue
            self.assertIn("over the REST limit", json.loads(response.read())["error"])
        finally:
            connection.close()
        self.assert_still_serves()

    def test_chunked_body(self):
        # no Content-Length: a chunked body (streaming HTTP clients send one) is read in chunks
        x = windows(seed=14)
        text = json.dumps({"inputs": x.tolist()}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.server.rest.port, timeout=30)
        try:
            connection.request("POST", "/v1/models/toy:predict", body=iter([text[:1000], text[1000:]]),
                               encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            answer = json.loads(response.read())
        finally:
            connection.close()
        self.assertEqual(answer, self.call("POST", "/v1/models/toy:predict", text)[1])
        # a negative chunk size is malformed, not "read to the end"
        with socket.create_connection(("127.0.0.1", self.server.rest.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n-5\r\n")
            reply = sock.makefile("rb").read()  # the server answers and closes
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:100])
        self.assertIn(b"malformed chunked body", reply)

    def test_keep_alive_connection(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.rest.port, timeout=30)
        try:
            for seed in (1, 2):  # two requests, one connection; an error answer keeps it open too
                body = json.dumps({"inputs": windows(seed=seed).tolist()})
                connection.request("POST", "/v1/models/toy:predict", body=body)
                response = connection.getresponse()
                self.assertEqual(response.status, 200)
                response.read()
                connection.request("GET", "/v1/models/nope")
                response = connection.getresponse()
                self.assertEqual(response.status, 404)
                response.read()
        finally:
            connection.close()

    # === The REST client: the same outputs as the gRPC client ===

    def test_rest_client_equals_grpc_client(self):
        x = windows(batch=3, seed=11)
        with RestPredictionClient(f"127.0.0.1:{self.server.rest.port}", "toy", timeout_s=30) as client:
            outputs = client.predict(x)
            self.assertEqual(sorted(outputs), ["logits", "probabilities"])
            for name, value in self.grpc.predict(x).items():
                self.assertEqual(outputs[name].dtype, value.dtype)
                np.testing.assert_array_equal(outputs[name], value)
            np.testing.assert_array_equal(client.embed(x), self.grpc.embed(x))
            self.assertEqual(client.window_shape(), VOLUME)
            self.assertEqual(client.signatures()["serving_default_fp16"],
                             self.grpc.signatures()["serving_default_fp16"])
            self.assertIn((2, "AVAILABLE"), client.status())
            with self.assertRaisesRegex(ValueError, "float16"):
                client.predict(x, "serving_default_fp16")
        with RestPredictionClient(self.url, "toy", version_label="stable") as stable:
            self.assertAllClose(stable.predict(x)["logits"], self.models[1](x)["logits"], atol=1e-5)
            self.assertEqual(stable.status(), [(1, "AVAILABLE")])
        with RestPredictionClient(self.url, "toy", version=7, retries=0) as missing:
            with self.assertRaises(RestError) as caught:
                missing.status()
        self.assertEqual(caught.exception.status, 404)
        self.assertIn("version 7 does not exist", str(caught.exception))

    def test_predict_cli_rest(self):
        from tfbrain import cli
        x = windows(batch=3, seed=12)
        folder = pathlib.Path(self.get_temp_dir())
        np.save(folder / "windows.npy", x)
        for protocol, target in (("rest", f"127.0.0.1:{self.server.rest.port}"), ("grpc", self.server.target)):
            code = cli.main(["predict", str(folder / "windows.npy"), "--target", target, "--model", "toy",
                             "--batch-size", "2", "--version-label", "stable",
                             "--output", str(folder / f"{protocol}.npz")] + (["--rest"] if protocol == "rest" else []))
            self.assertEqual(code, 0)
        with np.load(folder / "rest.npz") as rest, np.load(folder / "grpc.npz") as grpc_out:
            self.assertEqual(sorted(rest.files), sorted(grpc_out.files))
            for name in rest.files:
                np.testing.assert_array_equal(rest[name], grpc_out[name])
            self.assertAllClose(rest["logits"], self.models[1](x)["logits"], atol=1e-5)  # "stable" is version 1


def test_rest_binds_localhost_by_default_and_refuses_a_port_in_use(tmp_path):
    export.export_model(make_toy_task(seed=1), tmp_path, "toy", 1, warmup=False)
    with ModelServer({"toy": tmp_path / "toy"}, port=0, rest_port=0, preload=False) as server:
        assert server.rest.host == "127.0.0.1"
        assert server.rest.url == f"http://127.0.0.1:{server.rest.port}"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            blocked = RestServer(server.repository, port=sock.getsockname()[1])
            with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{sock.getsockname()[1]} for REST"):
                blocked.start()


def test_serve_cli_flags_are_checked(tmp_path, capsys):
    from tfbrain.cli import main

    export.export_model(make_toy_task(seed=1), tmp_path, "toy", 1, warmup=False)
    for flags, message in ((["--version-label", "stable"], "expects [NAME:]LABEL=VERSION"),
                           (["--version-label", "other:stable=1"], "model 'other' is not served"),
                           (["--rest-port", "8600", "--port", "8600"], "also the gRPC --port"),
                           (["--rest-max-body-mb", "0"], "--rest-max-body-mb must be > 0")):
        assert main(["serve", str(tmp_path / "toy"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tfbrain serve: error:") and message in err[0], err
    with socket.socket() as sock:  # a REST port in use: one line too
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(tmp_path / "toy"), "--port", "0", "--rest-port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tfbrain serve: error: could not bind 127.0.0.1:{port} for REST"), err


def test_curl_against_tfbrain_serve_equals_grpc(tmp_path):
    """The issue's done-when: `tfbrain serve --rest-port` answers curl with gRPC's numbers."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    model = make_toy_task(num_classes=2, seed=3)
    export.export_model(model, tmp_path, "toy", 1, warmup=False)
    ready = tmp_path / "ports"
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tfbrain.cli import main; sys.exit(main(sys.argv[1:]))",  # tfbrain
         "serve", str(tmp_path / "toy"), "--port", "0", "--rest-port", "0", "--ready-file", str(ready)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not ready.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists(), "server did not start"
        grpc_port, rest_port = ready.read_text().split()
        x = windows(batch=2, seed=13)
        answer = subprocess.run([curl, "-sS", "-X", "POST", f"http://127.0.0.1:{rest_port}/v1/models/toy:predict",
                                 "-d", json.dumps({"instances": x.tolist()})],
                                capture_output=True, text=True, timeout=60, check=True).stdout
        with PredictionClient(f"127.0.0.1:{grpc_port}", "toy") as client:
            expected = client.predict(x)
        predictions = json.loads(answer)["predictions"]
        for name in ("logits", "probabilities"):
            np.testing.assert_array_equal(np.array([p[name] for p in predictions], "float32"), expected[name])
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-2000:]
    assert f"REST API on http://127.0.0.1:{rest_port}/v1/models/NAME" in output


def test_string_tensors_travel_as_base64(tmp_path):
    """A string signature (tfbrain exports none; TF-Serving's b64 rule is checked on a tiny
    tf.Module): {"b64": ...} in, `_bytes` outputs out as {"b64": ...}, others as text."""
    import base64

    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")], jit_compile=False)
        def serve(self, text):
            return {"length": tf.strings.length(text), "echo_bytes": text, "upper": tf.strings.upper(text)}

    module = Echo()
    tf.saved_model.save(module, str(tmp_path / "echo" / "1"), signatures={"serving_default": module.serve})
    payload = b"\x00\xffab"
    with ModelServer({"echo": tmp_path / "echo"}, port=0, rest_port=0) as server:
        body = json.dumps({"instances": [{"b64": base64.b64encode(payload).decode()}, "hi"]}).encode()
        request = urllib.request.Request(f"{server.rest.url}/v1/models/echo:predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        with PredictionClient(server.target, "echo") as client:  # the same tensors over gRPC
            grpc_outputs = client.predict({"text": np.array([payload, b"hi"], dtype=object)})
    assert answer == {"predictions": [
        {"echo_bytes": {"b64": base64.b64encode(payload).decode()}, "length": 4, "upper": "\x00\ufffdAB"},
        {"echo_bytes": {"b64": "aGk="}, "length": 2, "upper": "HI"}]}
    assert grpc_outputs["echo_bytes"].tolist() == [payload, b"hi"]
    assert grpc_outputs["length"].tolist() == [4, 2]
