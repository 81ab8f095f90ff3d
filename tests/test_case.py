"""One-call test helpers shared by the whole suite (keras-hub style).

`fixture_path("swift", "small_io.npz")` returns the path to a parity fixture or skips
the test (fails under TFBRAIN_REQUIRE_FIXTURES=1) when `../shared/fixtures` is absent;
`import_extra("apache_beam", "beam")` does the same for an optional extra
(TFBRAIN_REQUIRE_EXTRAS=1).
"""

import json
import os
import pathlib
import tempfile
import unittest

import keras
import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("TFBRAIN_SHARED", REPO_ROOT.parent / "shared"))


def fixture_path(*parts: str) -> pathlib.Path:
    """Path of a file under `shared/fixtures/`, or skip/fail with a clear reason."""
    path = SHARED_DIR.joinpath("fixtures", *parts)
    if path.exists():
        return path
    reason = (f"parity fixture {path} not found: parity tests need the project's shared/ "
              "folder beside the checkout (or TFBRAIN_SHARED pointing at it)")
    if os.environ.get("TFBRAIN_REQUIRE_FIXTURES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def shared_data_path(*parts: str) -> pathlib.Path:
    """Path of a file under `shared/data/`, with the same skip/fail rule as fixtures."""
    path = SHARED_DIR.joinpath("data", *parts)
    if path.exists():
        return path
    reason = f"shared data {path} not found (needs shared/ beside the checkout)"
    if os.environ.get("TFBRAIN_REQUIRE_FIXTURES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def import_extra(module: str, extra: str):
    """Import an optional extra's module, or skip saying which extra installs it; fail instead
    under TFBRAIN_REQUIRE_EXTRAS=1 (set by .ci/run, which installs every extra)."""
    try:
        return __import__(module)
    except ImportError as error:
        reason = f"{module} not importable ({error}): pip install 'tfbrain[{extra}]'"
    if os.environ.get("TFBRAIN_REQUIRE_EXTRAS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def load_fixture_npz(*parts: str) -> dict:
    with np.load(fixture_path(*parts)) as data:
        return {k: data[k] for k in data.files}


def load_fixture_json(*parts: str) -> dict:
    return json.loads(fixture_path(*parts).read_text())


class TestCase(unittest.TestCase):
    """Base class with keras-hub-style one-call checks."""

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)

    def get_temp_dir(self) -> str:
        d = tempfile.mkdtemp(prefix="tfbrain_test_")
        self.addCleanup(lambda: __import__("shutil").rmtree(d, ignore_errors=True))
        return d

    def assertAllClose(self, actual, expected, atol=1e-6, rtol=1e-6, msg=None):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected),
                                   atol=atol, rtol=rtol, err_msg=msg or "")

    def assert_parity(self, actual, expected, rel_tol=1e-4, name="output"):
        """Max abs error <= rel_tol * std(expected); returns (max_abs_err, ratio)."""
        actual = np.asarray(actual, np.float64)
        expected = np.asarray(expected, np.float64)
        self.assertEqual(actual.shape, expected.shape, f"{name}: shape mismatch")
        err = float(np.max(np.abs(actual - expected)))
        scale = float(np.std(expected))
        self.assertLessEqual(err, rel_tol * scale,
                             f"{name}: max abs error {err:.3e} > {rel_tol} * std {scale:.3e}")
        return err, err / scale

    def run_layer_test(self, layer_cls, init_kwargs, input_data, expected_output_shape):
        """Eager call, symbolic call, compute_output_shape and config round trip."""
        layer = layer_cls(**init_kwargs)
        output = layer(input_data)
        self.assertEqual(tuple(output.shape), tuple(expected_output_shape))
        symbolic = layer_cls(**init_kwargs)(keras.KerasTensor(np.shape(input_data)))
        self.assertEqual(tuple(symbolic.shape), tuple(expected_output_shape))
        self.assertEqual(tuple(layer.compute_output_shape(np.shape(input_data))),
                         tuple(expected_output_shape))
        config = layer.get_config()
        restored = layer_cls.from_config(json.loads(json.dumps(config)))
        self.assertEqual(restored.get_config(), config)
        return layer

    def run_backbone_test(self, backbone_cls, init_kwargs, input_data, expected_output_shape):
        """Forward shape, JSON config round trip, and finite gradients for every variable."""
        backbone = backbone_cls(**init_kwargs)
        output = backbone(input_data)
        self.assertEqual(tuple(output.shape), tuple(expected_output_shape))
        config = backbone.get_config()
        restored = backbone_cls.from_config(json.loads(json.dumps(config)))
        self.assertEqual(restored.get_config(), config)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(backbone(input_data, training=True)))
        grads = tape.gradient(loss, backbone.trainable_variables)
        for var, grad in zip(backbone.trainable_variables, grads):
            self.assertIsNotNone(grad, f"no gradient for {var.path}")
            self.assertTrue(np.all(np.isfinite(grad)), f"non-finite gradient for {var.path}")
        return backbone
