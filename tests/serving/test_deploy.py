"""The deployment files cannot run here (no Docker engine, cluster or GPU); parse and check them."""

import re

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.test_case import REPO_ROOT, TestCase
from tfbrain.export import DEFAULT_BATCHING, batching_parameters_text

DEPLOY = REPO_ROOT / "serving" / "deploy"


def yaml_documents(text: str) -> list:
    """Every document of a YAML file (PyYAML, a test dependency)."""
    return list(yaml.safe_load_all(text))
BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                   "num_batch_threads", "pad_variable_length_inputs", "allowed_batch_sizes"}
REQUIRED_FLAGS = {"--port=8500", "--rest_api_port=8501", "--model_config_file=/config/models.config",
                  "--enable_batching=true", "--batching_parameters_file=/config/batching_parameters.txt",
                  "--grpc_channel_arguments=grpc.max_receive_message_length=2147483647,"
                  "grpc.max_send_message_length=2147483647"}


def parse_models_config(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def parse_batching(text: str) -> dict:
    """BatchingParameters text proto -> {field: value}; its proto is not in serving-api."""
    fields = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\w+)\s*(?:\{\s*value:\s*(\d+)\s*\}|:\s*(true|false|\d+))", line)
        assert match, f"not a BatchingParameters line: {line!r}"
        fields[match.group(1)] = match.group(2) or match.group(3)
    return fields


class DeployFilesTest(TestCase):
    def test_models_config_and_batching(self):
        config = parse_models_config((DEPLOY / "models.config").read_text())
        (entry,) = config.model_config_list.config
        self.assertEqual((entry.name, entry.base_path, entry.model_platform),
                         ("swift", "/models/swift", "tensorflow"))
        batching = parse_batching((DEPLOY / "batching_parameters.txt").read_text())
        self.assertLessEqual(set(batching), BATCHING_FIELDS)
        self.assertEqual(batching, parse_batching(batching_parameters_text(**DEFAULT_BATCHING)))

    def test_docker_compose(self):
        (compose,) = yaml_documents((DEPLOY / "docker-compose.yml").read_text())
        service = compose["services"]["tfserving"]
        self.assertRegex(service["image"], r"^tensorflow/serving:\d+\.\d+\.\d+-gpu$")
        self.assertLessEqual(REQUIRED_FLAGS, set(service["command"]))
        mounts = {v.split(":")[-2]: v for v in service["volumes"]}
        self.assertIn("/models", mounts)
        for name in ("models.config", "batching_parameters.txt"):
            self.assertIn(f"/config/{name}", mounts)
            source = mounts[f"/config/{name}"].split(":")[0]
            self.assertTrue((DEPLOY / source).is_file(), source)  # relative to the compose file
        self.assertEqual(set(service["ports"]), {"8500:8500", "8501:8501"})
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        self.assertEqual((device["driver"], device["capabilities"]), ("nvidia", ["gpu"]))

    def test_kubernetes(self):
        documents = yaml_documents((DEPLOY / "kubernetes.yaml").read_text())
        by_kind = {d["kind"]: d for d in documents}
        self.assertEqual(sorted(by_kind), ["ConfigMap", "Deployment", "Service"])
        data = by_kind["ConfigMap"]["data"]
        self.assertEqual(parse_models_config(data["models.config"]),
                         parse_models_config((DEPLOY / "models.config").read_text()))
        self.assertEqual(parse_batching(data["batching_parameters.txt"]),
                         parse_batching((DEPLOY / "batching_parameters.txt").read_text()))
        spec = by_kind["Deployment"]["spec"]
        self.assertEqual(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
        (container,) = spec["template"]["spec"]["containers"]
        self.assertRegex(container["image"], r"^tensorflow/serving:\d+\.\d+\.\d+-gpu$")
        self.assertLessEqual(REQUIRED_FLAGS, set(container["args"]))
        self.assertEqual(container["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertEqual({p["containerPort"] for p in container["ports"]}, {8500, 8501})
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        self.assertEqual(volumes[mounts["/config"]]["configMap"]["name"],
                         by_kind["ConfigMap"]["metadata"]["name"])
        self.assertIn("persistentVolumeClaim", volumes[mounts["/models"]])
        self.assertEqual(by_kind["Service"]["spec"]["selector"], spec["selector"]["matchLabels"])
        self.assertEqual({p["port"] for p in by_kind["Service"]["spec"]["ports"]}, {8500, 8501})

    def test_cpu_batching_parameters(self):
        # Chosen in docs/serving.md section 5: on CPU a merged batch costs more per window than
        # single windows, so no waiting for a batch and no padding up to allowed sizes (a
        # padded window costs as much as a real one).
        batching = parse_batching((DEPLOY / "batching_parameters_cpu.txt").read_text())
        self.assertLessEqual(set(batching), BATCHING_FIELDS)
        self.assertNotIn("allowed_batch_sizes", batching)
        self.assertEqual(batching["batch_timeout_micros"], "0")
        self.assertGreaterEqual(int(batching["max_batch_size"]), 1)
        self.assertGreaterEqual(int(batching["num_batch_threads"]), 1)
