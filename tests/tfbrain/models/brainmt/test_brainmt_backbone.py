import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.models.brainmt import BrainMT, BrainMTBackbone
from tfbrain.models.brainmt.brainmt_backbone import drop_path_rates
from tfbrain.models.registry import get_family
from tfbrain.models.task import FMRIClassifier, FMRIRegressor


class BrainMTBackboneTest(TestCase):
    def setUp(self):
        super().setUp()
        # 32 x 16 x 16 voxels -> a 1 x 2 x 1 token grid per frame (the stem's D, H, W are
        # Y, X, Z), 3 frames: L = 1 + 2 * 3 = 7
        self.init_kwargs = dict(volume_shape=(32, 16, 16, 3, 1), hidden_dim=16, depths=(2, 1),
                                num_heads=2, max_frames=5)
        self.fmri = np.random.RandomState(0).randn(2, 32, 16, 16, 3, 1).astype("float32")

    def test_backbone_basics(self):
        # forward shape, JSON config round trip, a finite gradient for every variable
        backbone = self.run_backbone_test(BrainMTBackbone, self.init_kwargs, self.fmri,
                                          expected_output_shape=(2, 7, 16))
        self.assertEqual(backbone.token_grid, (1, 2, 1))
        self.assertEqual(backbone.sequence_length, 7)
        symbolic = backbone(keras.KerasTensor((None, 32, 16, 16, 3, 1)))
        self.assertEqual(tuple(symbolic.shape), (None, 7, 16))
        self.assertEqual(backbone.pooling, "cls_token")

    def test_input_axis_order_is_mni_x_y_z(self):
        # upstream sees (T, C, Y, X, Z): the stem's first axis is MNI Y, so a volume that is
        # long in Y gets a token grid that is long in its first axis
        backbone = BrainMTBackbone(volume_shape=(16, 48, 32, 2, 1), hidden_dim=16, depths=(1, 0))
        self.assertEqual(backbone.token_grid, (3, 1, 2))
        self.assertEqual(tuple(backbone.get_layer("stem").output.shape), (None, 3, 1, 2, 16))

    def test_tiny_variant_gradients_are_finite(self):
        backbone = BrainMT.backbone("brainmt_tiny")
        fmri = np.random.RandomState(1).randn(2, 32, 32, 32, 4, 1).astype("float32")
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(backbone(fmri, training=True)))
        grads = tape.gradient(loss, backbone.trainable_variables)
        self.assertEqual(len(grads), len(backbone.trainable_variables))
        for var, grad in zip(backbone.trainable_variables, grads):
            self.assertIsNotNone(grad, var.path)
            self.assertTrue(np.all(np.isfinite(grad)), var.path)
            self.assertGreater(float(tf.reduce_max(tf.abs(grad))), 0.0, var.path)

    def test_fit_two_steps_in_classifier(self):
        fmri = np.random.RandomState(2).randn(4, 32, 32, 32, 4, 1).astype("float32")
        labels = np.array([[0.0], [1.0], [1.0], [0.0]], "float32")
        for jit_compile in (False, True):
            keras.utils.set_random_seed(0)
            model = FMRIClassifier(BrainMT.backbone("brainmt_tiny"), num_classes=1)
            model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                          loss={"logits": keras.losses.BinaryCrossentropy(from_logits=True)},
                          jit_compile=jit_compile)
            history = model.fit(fmri, {"logits": labels}, batch_size=2, epochs=1, verbose=0)
            self.assertTrue(np.isfinite(history.history["loss"][-1]), f"jit={jit_compile}")
            # the head reads the cls token; embed() is the cls feature
            embedding = model.embed(fmri[:2])
            self.assertAllClose(embedding, model.backbone(fmri[:2])[:, 0], atol=1e-6)

    def test_regressor_reads_cls_token(self):
        backbone = BrainMTBackbone(**self.init_kwargs)
        model = FMRIRegressor(backbone, num_outputs=1)
        head = model.get_layer("head")
        expected = backbone(self.fmri)[:, 0] @ head.kernel + head.bias
        self.assertAllClose(model(self.fmri)["prediction"], expected, atol=1e-5)

    def test_blockwise_attention_path_equals_plain(self):
        plain = BrainMTBackbone(**self.init_kwargs, attention_implementation="plain")
        blockwise = BrainMTBackbone(**self.init_kwargs, attention_implementation="blockwise",
                                    attention_block_size=3)
        blockwise.set_weights(plain.get_weights())
        self.assertTrue(blockwise.get_layer("attention_0").uses_blockwise(7))
        self.assertAllClose(blockwise(self.fmri), plain(self.fmri), atol=1e-5)
        # "auto" goes blockwise when one sample's scores exceed the threshold
        auto = BrainMTBackbone(**self.init_kwargs, attention_max_plain_score_bytes=100)
        self.assertTrue(auto.get_layer("attention_0").uses_blockwise(7))
        self.assertTrue(BrainMTBackbone(**self.init_kwargs).get_layer("attention_0")
                        .uses_blockwise(50_401))  # 2 x 50,401^2 float32 = 20 GB

    def test_bidirectional_option(self):
        uni = BrainMTBackbone(**self.init_kwargs)
        bi = BrainMTBackbone(**self.init_kwargs, bidirectional=True)
        # the backward direction: conv (4E + E), x_proj (E x (R + 2N)), dt_proj (R x E + E),
        # A_log (E x N), D (E), with E = 32, R = 1, N = 16, per Mamba block
        per_block = 5 * 32 + 32 * 33 + 32 + 32 + 32 * 16 + 32
        self.assertEqual(bi.count_params() - uni.count_params(), 2 * per_block)
        self.assertEqual(tuple(bi(self.fmri).shape), (2, 7, 16))

    def test_variants_match_upstream_parameter_counts(self):
        # measured by instantiating upstream BrainMT (research/mamba.md section 5):
        # 39,104,961 with the 513-parameter head
        self.assertEqual(BrainMT.backbone("brainmt_paper").count_params(), 39_104_961 - 513)
        spec = get_family("brainmt")
        self.assertEqual(spec.default_variant, "brainmt_paper")
        self.assertEqual(BrainMT.backbone("brainmt_small").sequence_length, 1 + 252 * 4)
        with self.assertRaisesRegex(ValueError, "unknown brainmt variant"):
            BrainMT.backbone("brainmt_huge")

    def test_drop_path_schedule_follows_upstream(self):
        rates = drop_path_rates(0.1, (2, 2))
        self.assertAllClose(rates["mamba"], [0.0, 0.0])
        self.assertAllClose(rates["attention"], [0.2 / 3, 0.1])
        self.assertEqual(rates["norm_f"], 0.1)

    def test_bad_inputs(self):
        backbone = BrainMTBackbone(**self.init_kwargs)
        expected = r"expects fmri windows of shape \(batch, 32, 16, 16, 3, 1\)"
        with self.assertRaisesRegex(ValueError, expected):
            backbone(np.zeros((2, 32, 16, 16, 3), "float32"))
        with self.assertRaisesRegex(ValueError, expected):
            backbone(np.zeros((2, 32, 16, 32, 3, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "at most 5 frames"):
            backbone(np.zeros((1, 32, 16, 16, 6, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "was built for T=3"):
            backbone(np.zeros((1, 32, 16, 16, 4, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "volume_shape"):
            BrainMTBackbone(**{**self.init_kwargs, "volume_shape": (32, 16, 16, 3)})
        with self.assertRaisesRegex(ValueError, "at least 16 voxels"):
            BrainMTBackbone(**{**self.init_kwargs, "volume_shape": (32, 8, 16, 3, 1)})
        with self.assertRaisesRegex(ValueError, "max_frames=2"):
            BrainMTBackbone(**{**self.init_kwargs, "max_frames": 2})
        with self.assertRaisesRegex(ValueError, "depths"):
            BrainMTBackbone(**{**self.init_kwargs, "depths": (2, -1)})
        with self.assertRaisesRegex(ValueError, "hidden_dim"):
            BrainMTBackbone(**{**self.init_kwargs, "hidden_dim": 20})
        with self.assertRaisesRegex(ValueError, "attention_implementation"):
            BrainMTBackbone(**{**self.init_kwargs, "attention_implementation": "flash"})

    def test_preset_round_trip(self):
        backbone = BrainMTBackbone(**self.init_kwargs)
        folder = self.get_temp_dir() + "/preset"
        backbone.save_to_preset(folder)
        restored = BrainMTBackbone.from_preset(folder)
        self.assertAllClose(restored(self.fmri), backbone(self.fmri), atol=1e-6)

    @pytest.mark.large
    def test_paper_size_symbolic_build(self):
        backbone = BrainMT.backbone("brainmt_paper")
        self.assertEqual(tuple(backbone.output.shape), (None, 50_401, 512))
        self.assertTrue(backbone.get_layer("attention_0").uses_blockwise(50_401))


class BrainMTInitTest(TestCase):
    def test_upstream_init(self):
        backbone = BrainMTBackbone(volume_shape=(16, 16, 16, 2, 1), hidden_dim=64, depths=(2, 2))
        mixer = backbone.get_layer("mamba_layer_1").mixer
        # segm_init_weights: dt_proj bias 0, Linear weights ~ N(0, 0.02)
        self.assertAllClose(mixer.forward_branch.dt_bias, np.zeros(128))
        self.assertAlmostEqual(float(np.std(mixer.in_proj.kernel)), 0.02, delta=0.002)
        # _init_weights: out_proj / fc2 ~ U(+-1/sqrt(fan_in)) / sqrt(4 layers)
        limit = 1 / np.sqrt(128) / 2
        self.assertLessEqual(float(np.max(np.abs(mixer.out_proj.kernel))), limit)
        self.assertGreater(float(np.max(np.abs(mixer.out_proj.kernel))), 0.9 * limit)
        self.assertAllClose(backbone.get_layer("attention_0").qkv.bias, np.zeros(192))
        self.assertLessEqual(float(np.max(np.abs(backbone.get_layer("mlp").linear2.kernel))),
                             limit)


class BrainMTExportTest(TestCase):
    @pytest.mark.large
    def test_saved_model_with_blockwise_attention(self):
        from tfbrain.layers import selective_scan_jit

        backbone = BrainMTBackbone(volume_shape=(32, 16, 16, 3, 1), hidden_dim=16, depths=(1, 1),
                                   attention_implementation="blockwise", attention_block_size=4)
        model = FMRIClassifier(backbone, num_classes=1)
        fmri = np.random.RandomState(3).randn(2, 32, 16, 16, 3, 1).astype("float32")
        path = self.get_temp_dir() + "/saved"
        with selective_scan_jit(False):  # a serving graph without nested XLA functions
            model.export(path)
        served = tf.saved_model.load(path).signatures["serving_default"]
        outputs = served(tf.constant(fmri))
        logits = [v for k, v in outputs.items() if "logits" in k][0]
        self.assertAllClose(logits, model(fmri)["logits"], atol=1e-5)
