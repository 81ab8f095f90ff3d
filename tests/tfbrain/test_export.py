"""SavedModel export for TF-Serving: layout, signatures, numbers, graph checks, side files."""

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from tests.serving.toy_task import make_toy_task, save_toy_preset
from tests.test_case import TestCase
from tfbrain import export
from tfbrain.export import ExportError

VOLUME = (4, 4, 4, 3, 1)


def windows(batch=2, seed=1):
    return np.random.default_rng(seed).standard_normal((batch,) + VOLUME).astype("float32")


@tf.function(jit_compile=True)
def _xla_square(x):
    return x * x


@keras.saving.register_keras_serializable(package="tfbrain_tests")
class XLASquare(keras.layers.Layer):
    """Calls an XLA-compiled function, as the selective scan does."""

    def call(self, x):
        return _xla_square(x)


@keras.saving.register_keras_serializable(package="tfbrain_tests")
class NumpySquare(keras.layers.Layer):
    """Calls back into Python, which no model server can run."""

    def call(self, x):
        y = tf.numpy_function(np.square, [x], tf.float32)
        y.set_shape(x.shape)
        return y


class ExportTest(TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = make_toy_task("classification", num_classes=3)
        cls.base = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_export_"))
        cls.path = export.export_model(cls.model, cls.base, "toy", source="unit-test")
        cls.loaded = tf.saved_model.load(str(cls.path))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.base, ignore_errors=True)

    def test_layout(self):
        self.assertEqual(self.path, self.base / "toy" / "1")
        for name in ("saved_model.pb", "variables", "fingerprint.pb",
                     "assets.extra/tf_serving_warmup_requests", "assets.extra/tfbrain_export.json"):
            self.assertTrue((self.path / name).exists(), name)
        self.assertEqual([p.name for p in (self.base / "toy").iterdir()], ["1"])  # no temp left
        info = json.loads((self.path / "assets.extra/tfbrain_export.json").read_text())
        self.assertEqual(info["task"]["type"], "classification")
        self.assertEqual(info["signatures"]["serving_default_fp16"]["inputs"]["fmri"],
                         {"dtype": "float16", "shape": [-1, *VOLUME]})

    def test_signatures(self):
        self.assertEqual(sorted(self.loaded.signatures),
                         ["embed", "embed_fp16", "serving_default", "serving_default_fp16"])
        for name, dtype in (("serving_default", tf.float32), ("serving_default_fp16", tf.float16),
                            ("embed", tf.float32), ("embed_fp16", tf.float16)):
            _, inputs = self.loaded.signatures[name].structured_input_signature
            self.assertEqual(list(inputs), ["fmri"])
            self.assertEqual(inputs["fmri"].dtype, dtype)
            self.assertEqual(inputs["fmri"].shape.as_list(), [None, *VOLUME])  # dynamic batch
        outputs = self.loaded.signatures["serving_default"].structured_outputs
        self.assertEqual(sorted(outputs), ["logits", "probabilities"])
        self.assertEqual(outputs["logits"].shape.as_list(), [None, 3])
        self.assertEqual(self.loaded.signatures["embed"].structured_outputs["embedding"].shape.as_list(),
                         [None, 6])

    def test_outputs_match_model(self):
        x = windows(batch=3)
        expected = self.model(x)
        out = self.loaded.signatures["serving_default"](fmri=tf.constant(x))
        self.assertAllClose(out["logits"], expected["logits"], atol=1e-5)
        self.assertAllClose(out["probabilities"], tf.nn.softmax(expected["logits"]), atol=1e-5)
        embedding = self.loaded.signatures["embed"](fmri=tf.constant(x))["embedding"]
        self.assertAllClose(embedding, np.mean(self.model.backbone(x), axis=(1, 2, 3, 4)), atol=1e-5)
        # float16 signatures compute in float32 on the float16-rounded window
        rounded = x.astype("float16")
        out16 = self.loaded.signatures["serving_default_fp16"](fmri=tf.constant(rounded))
        self.assertAllClose(out16["logits"], self.model(rounded.astype("float32"))["logits"], atol=1e-5)
        self.assertAllClose(out16["logits"], expected["logits"], atol=1e-2)

    def test_no_xla_must_compile_and_no_python_ops(self):
        self.assertEqual(export.find_must_compile_functions(self.path), [])
        self.assertEqual(export.find_python_ops(self.path), [])

    def test_fp16_upcast_is_not_inlined(self):
        # Inlined, Grappler reorders the cast and the float16 signatures run slower on CPU.
        library = export._read_saved_model_proto(self.path).meta_graphs[0].graph_def.library
        noinline = [f for f in library.function if f.attr["_noinline"].b]
        self.assertTrue(noinline)
        self.assertTrue(all(any(n.op == "Cast" for n in f.node_def) for f in noinline))

    def test_refuses_xla_must_compile_graph(self):
        fmri = keras.Input(VOLUME, name="fmri")
        model = keras.Model(fmri, XLASquare()(fmri))
        with self.assertRaisesRegex(ExportError, "_XlaMustCompile"):
            export.export_model(model, self.get_temp_dir(), "xla", write_server_config=False)

    def test_refuses_python_ops(self):
        fmri = keras.Input(VOLUME, name="fmri")
        model = keras.Model(fmri, NumpySquare()(fmri))
        base = pathlib.Path(self.get_temp_dir())
        with self.assertRaisesRegex(ExportError, "calls Python"):
            export.export_model(model, base, "py", write_server_config=False)
        self.assertEqual(export.list_versions(base / "py"), [])  # nothing published

    def test_warmup_requests(self):
        from tensorflow_serving.apis import prediction_log_pb2
        records = list(tf.data.TFRecordDataset(
            str(self.path / "assets.extra" / export.WARMUP_FILE)).as_numpy_iterator())
        self.assertEqual(len(records), 4)
        names = []
        for record in records:
            log = prediction_log_pb2.PredictionLog.FromString(record)
            request = log.predict_log.request
            self.assertEqual(request.model_spec.name, "toy")
            names.append(request.model_spec.signature_name)
            window = tf.make_ndarray(request.inputs["fmri"])
            self.assertEqual(window.shape, (1, *VOLUME))
            self.loaded.signatures[request.model_spec.signature_name](fmri=tf.constant(window))
        self.assertEqual(sorted(names), sorted(self.loaded.signatures))

    def test_server_config_files(self):
        from tensorflow_serving.config import model_server_config_pb2
        export.export_model(make_toy_task("regression"), self.base, "other")
        config = text_format.Parse((self.base / "models.config").read_text(),
                                   model_server_config_pb2.ModelServerConfig())
        entries = {c.name: c for c in config.model_config_list.config}
        self.assertEqual(sorted(entries), ["other", "toy"])
        self.assertEqual(entries["toy"].base_path, "/models/toy")
        self.assertEqual(entries["toy"].model_platform, "tensorflow")
        batching = (self.base / "batching_parameters.txt").read_text()
        self.assertRegex(batching, r"max_batch_size \{ value: \d+ \}")
        self.assertRegex(batching, r"batch_timeout_micros \{ value: \d+ \}")

    def test_saved_model_cli_lists_signatures(self):
        script = pathlib.Path(sys.executable).with_name("saved_model_cli")
        command = [str(script)] if script.exists() else [
            sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        result = subprocess.run(command + ["show", "--dir", str(self.path), "--all"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        for name in ("serving_default", "serving_default_fp16", "embed", "embed_fp16"):
            self.assertIn(f"signature_def['{name}']", result.stdout)
        self.assertIn("DT_HALF", result.stdout)
        self.assertIn("tensorflow/serving/predict", result.stdout)


class ExportSourcesTest(TestCase):
    def test_versions_increase_and_overwrite(self):
        base = pathlib.Path(self.get_temp_dir())
        model = make_toy_task("regression")
        self.assertEqual(export.export_model(model, base, "m", warmup=False).name, "1")
        self.assertEqual(export.export_model(model, base, "m", warmup=False).name, "2")
        self.assertEqual(export.export_model(model, base, "m", version=7, warmup=False).name, "7")
        with self.assertRaisesRegex(FileExistsError, "overwrite"):
            export.export_model(model, base, "m", version=7, warmup=False)
        export.export_model(model, base, "m", version=7, overwrite=True)
        self.assertEqual(export.list_versions(base / "m"), [1, 2, 7])
        with self.assertRaisesRegex(ValueError, "model_name"):
            export.export_model(model, base, "../escape")

    def test_task_types(self):
        base = pathlib.Path(self.get_temp_dir())
        for task_type, keys in (("regression", ["prediction"]), ("contrastive", ["embedding"])):
            path = export.export_model(make_toy_task(task_type), base, task_type, warmup=False)
            loaded = tf.saved_model.load(str(path))
            self.assertEqual(sorted(loaded.signatures["serving_default"].structured_outputs), keys)
        binary = make_toy_task("classification", num_classes=1)
        loaded = tf.saved_model.load(str(export.export_model(binary, base, "binary", warmup=False)))
        x = windows()
        out = loaded.signatures["serving_default"](fmri=tf.constant(x))
        self.assertAllClose(out["probabilities"], tf.sigmoid(binary(x)["logits"]), atol=1e-6)

    def test_bare_backbone(self):
        backbone = make_toy_task().backbone
        path = export.export_model(backbone, self.get_temp_dir(), "backbone", warmup=False)
        loaded = tf.saved_model.load(str(path))
        x = windows()
        for name in ("serving_default", "embed"):
            self.assertAllClose(loaded.signatures[name](fmri=tf.constant(x))["embedding"],
                                np.mean(backbone(x), axis=(1, 2, 3, 4)), atol=1e-5)

    def test_from_preset_folder_and_keras_file(self):
        tmp = pathlib.Path(self.get_temp_dir())
        model = make_toy_task("classification", num_classes=2, seed=3)
        save_toy_preset(model, tmp / "preset")
        path = export.export_preset(tmp / "preset", tmp / "base", "from_preset", warmup=False)
        info = json.loads((path / "assets.extra/tfbrain_export.json").read_text())
        self.assertEqual(info["task"], {"type": "classification", "num_classes": 2})
        self.assertEqual(info["preset_metadata"]["inputs"]["fmri"]["shape"], [None, *VOLUME])
        x = windows()
        loaded = tf.saved_model.load(str(path))
        self.assertAllClose(loaded.signatures["serving_default"](fmri=tf.constant(x))["logits"],
                            model(x)["logits"], atol=1e-5)
        model.save(tmp / "model.keras")
        path = export.export_preset(tmp / "model.keras", tmp / "base", "from_keras", warmup=False)
        loaded = tf.saved_model.load(str(path))
        self.assertAllClose(loaded.signatures["serving_default"](fmri=tf.constant(x))["logits"],
                            model(x)["logits"], atol=1e-5)

    def test_inputs_keep_their_names_and_dynamic_shapes_are_refused(self):
        # a model's own input names become the signature's (feature-stream models have
        # several); only the fMRI families' single input is called "fmri"
        bold = keras.Input(VOLUME, name="bold")
        stream = keras.Input((3, 2), name="stream")
        both = keras.Model({"bold": bold, "stream": stream},
                           keras.layers.Dense(2)(keras.ops.mean(bold, axis=(1, 2, 3, 4))
                                                 + keras.ops.mean(stream, axis=1)))
        path = export.export_model(both, self.get_temp_dir(), "two_inputs", warmup=True)
        loaded = tf.saved_model.load(str(path))
        x, s = windows(), np.ones((2, 3, 2), "float32")
        out = loaded.signatures["serving_default_fp16"](bold=tf.constant(x, tf.float16),
                                                        stream=tf.constant(s, tf.float16))
        self.assertEqual(out["embedding"].shape, (2, 2))
        free = keras.Input((None, 4, 4, 3, 1), name="fmri")
        with self.assertRaisesRegex(ExportError, "known"):
            export.export_model(keras.Model(free, free), self.get_temp_dir(), "x")

    def test_cli(self):
        from tfbrain import cli
        tmp = pathlib.Path(self.get_temp_dir())
        save_toy_preset(make_toy_task(), tmp / "toy-preset")
        self.assertEqual(cli.main(["export", str(tmp / "toy-preset"), "--model-base", str(tmp / "base"),
                                   "--no-warmup"]), 0)
        self.assertEqual(export.list_versions(tmp / "base" / "toy-preset"), [1])

