import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase, load_fixture_json, load_fixture_npz
from tfbrain.models.swift import SwiFT, SwiFTBackbone
from tfbrain.models.swift.swift_conversion import load_upstream_backbone, swift_kwargs_from_upstream
from tfbrain.models.task import FMRIClassifier

TINY = dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12, depths=(1, 2),
            num_heads=(2, 4), first_window_size=(2, 2, 2, 2), window_size=(2, 2, 2, 2))


def converted_fixture(name, dtype=None):
    """Keras backbone with the fixture's weights, and the fixture io (channels-last)."""
    config = load_fixture_json("swift", f"{name}_config.json")
    state_dict = load_fixture_npz("swift", f"{name}_state_dict.npz")
    io = load_fixture_npz("swift", f"{name}_io.npz")
    kwargs = swift_kwargs_from_upstream(config["constructor_kwargs"])
    backbone = load_upstream_backbone(state_dict, {**kwargs, "dtype": dtype} if dtype else kwargs)
    fmri = io["input"].astype("float32").transpose(0, 2, 3, 4, 5, 1)  # (B, D, H, W, T, C)
    expected = io["output_f64"].transpose(0, 2, 3, 4, 5, 1)
    return backbone, fmri, expected


class SwiFTBackboneTest(TestCase):
    def test_backbone_basics(self):
        fmri = np.random.rand(2, 8, 8, 8, 4, 1).astype("float32")
        backbone = self.run_backbone_test(SwiFTBackbone, TINY, fmri, (2, 2, 2, 2, 4, 24))
        symbolic = backbone(keras.KerasTensor((None, 8, 8, 8, 4, 1)))
        self.assertEqual(tuple(symbolic.shape), (None, 2, 2, 2, 4, 24))

    def test_paper_variant_parameter_count(self):
        # upstream counts 4,315,212 including a 576-parameter LayerNorm it never applies
        backbone = SwiFT.backbone("swift_paper")
        self.assertEqual(backbone.count_params(), 4_315_212 - 576)
        self.assertEqual(tuple(backbone.output.shape), (None, 2, 2, 2, 20, 288))

    def test_shorter_windows_reuse_weights(self):
        backbone = SwiFTBackbone(**TINY)
        short = SwiFTBackbone(**{**TINY, "volume_shape": (8, 8, 8, 2, 1), "max_frames": 4})
        short.set_weights(backbone.get_weights())
        self.assertEqual(tuple(short(np.zeros((1, 8, 8, 8, 2, 1), "float32")).shape),
                         (1, 2, 2, 2, 2, 24))

    def test_bad_inputs_name_the_expected_shape(self):
        backbone = SwiFTBackbone(**TINY)
        with self.assertRaisesRegex(ValueError, r"\(batch, 8, 8, 8, 4, 1\).*rank 5"):
            backbone(np.zeros((1, 8, 8, 8, 4), "float32"))
        with self.assertRaisesRegex(ValueError, r"\(batch, 8, 8, 8, 4, 1\).*position tables"):
            backbone(np.zeros((1, 8, 8, 16, 4, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "at most 4 frames"):
            backbone(np.zeros((1, 8, 8, 8, 6, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "max_frames"):
            SwiFTBackbone(**{**TINY, "max_frames": 2})
        with self.assertRaisesRegex(ValueError, "divisible by 2"):
            SwiFTBackbone(**{**TINY, "volume_shape": (8, 8, 6, 4, 1)})

    def test_drop_path_and_dropout_only_in_training(self):
        backbone = SwiFTBackbone(**TINY, dropout_rate=0.1, attention_dropout_rate=0.1,
                                 drop_path_rate=0.2)
        fmri = np.random.rand(2, 8, 8, 8, 4, 1).astype("float32")
        self.assertAllClose(backbone(fmri), backbone(fmri))
        self.assertFalse(np.allclose(backbone(fmri, training=True), backbone(fmri, training=True)))

    def test_fit_loss_falls_with_and_without_xla(self):
        rng = np.random.default_rng(0)
        fmri = rng.normal(size=(8, 8, 8, 8, 4, 1)).astype("float32")
        labels = np.array([0, 1] * 4, "float32")[:, None]
        fmri[labels[:, 0] == 1, :4] += 1.0  # planted difference
        for jit_compile in (False, True):
            keras.utils.set_random_seed(1)
            model = FMRIClassifier(SwiFTBackbone(**TINY))
            model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                          loss={"logits": keras.losses.BinaryCrossentropy(from_logits=True)},
                          jit_compile=jit_compile)
            history = model.fit(fmri, {"logits": labels}, batch_size=4, epochs=8, verbose=0)
            losses = history.history["loss"]
            self.assertLess(losses[-1], 0.7 * losses[0], f"jit_compile={jit_compile}: {losses}")

    def test_preset_round_trip(self):
        backbone = SwiFTBackbone(**TINY)
        folder = self.get_temp_dir() + "/tiny"
        backbone.save_to_preset(folder)
        restored = SwiFTBackbone.from_preset(folder)
        fmri = np.random.rand(1, 8, 8, 8, 4, 1).astype("float32")
        self.assertAllClose(restored(fmri), backbone(fmri))
        metadata = json.load(open(folder + "/metadata.json"))
        self.assertEqual(metadata["inputs"]["fmri"]["shape"], [None, 8, 8, 8, 4, 1])
        self.assertEqual(metadata["parameter_count"], backbone.count_params())

    def test_keras_file_round_trip(self):
        model = FMRIClassifier(SwiFTBackbone(**TINY))
        path = self.get_temp_dir() + "/model.keras"
        model.save(path)
        restored = keras.saving.load_model(path)
        fmri = np.random.rand(1, 8, 8, 8, 4, 1).astype("float32")
        self.assertAllClose(restored(fmri)["logits"], model(fmri)["logits"], atol=1e-6)

    def test_missing_named_preset_says_how_to_make_it(self):
        with self.assertRaisesRegex(FileNotFoundError, "tfbrain convert swift"):
            SwiFT.from_pretrained("swift.hcp-sex")


class SwiFTParityTest(TestCase):
    """Converted upstream weights reproduce the upstream float64 outputs."""

    def check_parity(self, name):
        backbone, fmri, expected = converted_fixture(name)
        err, ratio = self.assert_parity(backbone(fmri), expected, rel_tol=1e-4, name=name)
        print(f"\nSwiFT parity {name}: max abs error {err:.2e} = {ratio:.2e} x std")
        return backbone, fmri

    def check_blocks(self, name, backbone, fmri):
        # every stored block output, so a failure points at its block
        inter = load_fixture_npz("swift", f"{name}_intermediates.npz")
        names = [f"stage_{i}_block_{j}" for i, d in enumerate(backbone.depths) for j in range(d)]
        outputs = keras.Model(backbone.input, [backbone.get_layer(n).output for n in names])(fmri)
        for layer_name, out in zip(names, outputs):
            _, i, _, j = layer_name.split("_")
            key = f"layers.{i}.blocks.{j}"
            if key in inter:
                self.assert_parity(out, inter[key], rel_tol=1e-4, name=key)

    def test_small(self):
        self.check_blocks("small", *self.check_parity("small"))

    def test_edge(self):
        self.check_blocks("edge", *self.check_parity("edge"))

    def test_full(self):
        self.check_parity("full")


class SwiFTBfloat16Test(TestCase):
    """The mixed_bfloat16 path: matmuls in bfloat16, softmax and layer norms in float32."""

    def test_parity_at_bfloat16_tolerance(self):
        # bfloat16 keeps 8 significant bits (rounding 2^-9 = 0.2% relative); the residual
        # stream is stored in bfloat16 between blocks, so roundings add up over 8 blocks and
        # 3 merges. Measured on small/edge: max 5.1%/5.4% of std, rms 1.4%/0.9% of std;
        # the bounds leave a factor of ~2 (a float16-like 11-bit path would be ~8x smaller,
        # a broken mask or softmax in bfloat16 tens of % off).
        for name in ("small", "edge"):
            backbone, fmri, expected = converted_fixture(name, dtype="mixed_bfloat16")
            out = backbone(fmri)
            self.assertEqual(keras.backend.standardize_dtype(out.dtype), "bfloat16")
            error = np.asarray(out, np.float64) - expected
            scale = np.std(expected)
            print(f"\nSwiFT bfloat16 {name}: max {np.max(np.abs(error)) / scale:.3f} x std, "
                  f"rms {np.sqrt(np.mean(error ** 2)) / scale:.4f} x std")
            self.assertLessEqual(np.max(np.abs(error)), 0.1 * scale, name)
            self.assertLessEqual(np.sqrt(np.mean(error ** 2)), 0.03 * scale, name)

    @pytest.mark.large
    def test_export_takes_float32_and_computes_in_bfloat16(self):
        from tfbrain import export

        backbone = SwiFTBackbone(**TINY, dtype="mixed_bfloat16")
        folder = self.get_temp_dir()
        backbone.save_to_preset(folder + "/preset")
        path = export.export_preset(folder + "/preset", folder + "/base", "tiny", warmup=False)
        loaded = tf.saved_model.load(str(path))
        _, inputs = loaded.signatures["serving_default"].structured_input_signature
        self.assertEqual(inputs["fmri"].dtype, tf.float32)
        fmri = np.random.default_rng(0).normal(size=(2, 8, 8, 8, 4, 1)).astype("float32")
        served = loaded.signatures["serving_default"](fmri=tf.constant(fmri))["embedding"]
        self.assertEqual(served.dtype, tf.float32)
        # within the bfloat16 tolerance of the same weights computed in float32
        reference = SwiFTBackbone(**TINY)
        reference.set_weights(backbone.get_weights())
        expected = np.mean(reference(fmri), axis=(1, 2, 3, 4))
        self.assertAllClose(served, expected, atol=0.1 * np.std(expected), rtol=0)
        # the saved graph does its matmuls in bfloat16
        proto = export._read_saved_model_proto(path)
        matmul_types = {node.attr["T"].type for graph in proto.meta_graphs
                        for function in graph.graph_def.library.function
                        for node in function.node_def
                        if node.op in ("MatMul", "BatchMatMulV2", "BatchMatMulV3")}
        self.assertIn(tf.bfloat16.as_datatype_enum, matmul_types)
