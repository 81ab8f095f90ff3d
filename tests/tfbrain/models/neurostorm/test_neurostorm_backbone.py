import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.models.neurostorm import NeuroSTORM, NeuroSTORMBackbone
from tfbrain.models.neurostorm.neurostorm_layers import NeuroSTORMBlock4D, NeuroSTORMPatchExpanding


class NeuroSTORMBackboneTest(TestCase):
    def setUp(self):
        super().setUp()
        # patch grid 4^3 x 4: stage 0 has a plain and a shifted block (window 2, shift 1),
        # stage 1 (2^3 x 4) is the "full" last stage.
        self.init_kwargs = dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1),
                                hidden_dim=12, depths=(2, 1), first_window_size=(2, 2, 2, 2),
                                window_size=(2, 2, 2, 2), last_layer_full_msa=True)
        self.fmri = np.random.RandomState(0).randn(2, 8, 8, 8, 4, 1).astype("float32")

    def test_backbone_basics(self):
        # forward shape, JSON config round trip, a finite gradient for every variable
        self.run_backbone_test(NeuroSTORMBackbone, self.init_kwargs, self.fmri,
                               expected_output_shape=(2, 2, 2, 2, 4, 24))

    def test_block_and_expanding_layers(self):
        x = np.random.RandomState(1).randn(2, 4, 4, 4, 4, 12).astype("float32")
        self.run_layer_test(NeuroSTORMBlock4D, dict(hidden_dim=12, window_size=(2, 2, 2, 2),
                                                    shift_size=(1, 1, 1, 1), prompt_len=2),
                            x, expected_output_shape=(2, 4, 4, 4, 4, 12))
        self.run_layer_test(NeuroSTORMPatchExpanding, dict(hidden_dim=12), x,
                            expected_output_shape=(2, 8, 8, 8, 4, 6))

    def test_shifted_windows_wrap_without_mask(self):
        # As released, the shifted block rolls the grid and scans each window unmasked:
        # after a roll by 1 on a 4-long axis with windows of 2, voxel 3 and voxel 0 share
        # a window (3 first, then 0), so the output at voxel 0 depends on voxel 3. A Swin
        # mask would cut that link; the unshifted block keeps them apart too.
        x = tf.constant(np.random.RandomState(2).randn(1, 4, 4, 4, 4, 12).astype("float32"))
        for shift, linked in (((1, 1, 1, 1), True), ((0, 0, 0, 0), False)):
            block = NeuroSTORMBlock4D(12, window_size=(2, 2, 2, 2), shift_size=shift)
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = block(x)[0, 0, 0, 0, 0]
            grad = tape.gradient(out, x)[0, 3, 3, 3, 3]
            self.assertEqual(bool(np.any(np.asarray(grad) != 0)), linked, f"shift={shift}")

    def test_prompt_tokens_add_parameters(self):
        plain = NeuroSTORMBackbone(**self.init_kwargs)
        prompted = NeuroSTORMBackbone(**self.init_kwargs, prompt_len=3)
        # one (1, 3, C) prompt per block: two blocks of width 12, one of width 24
        self.assertEqual(prompted.count_params() - plain.count_params(), 3 * (12 + 12 + 24))
        self.assertEqual(tuple(prompted(self.fmri).shape), (2, 2, 2, 2, 4, 24))

    def test_variants_match_upstream_parameter_counts(self):
        # measured by instantiating upstream NeuroSTORM (research/mamba.md section 4)
        self.assertEqual(NeuroSTORM.backbone("neurostorm_paper").count_params(), 5_173_020)
        self.assertEqual(NeuroSTORM.backbone("neurostorm_paper", hidden_dim=24).count_params(),
                         2_391_336)
        with self.assertRaisesRegex(ValueError, "unknown neurostorm variant"):
            NeuroSTORM.backbone("neurostorm_huge")

    def test_bad_inputs(self):
        backbone = NeuroSTORMBackbone(**self.init_kwargs)
        expected = r"expects fmri windows of shape \(batch, 8, 8, 8, 4, 1\)"
        with self.assertRaisesRegex(ValueError, expected):
            backbone(np.zeros((2, 8, 8, 8, 4), "float32"))
        with self.assertRaisesRegex(ValueError, expected):
            backbone(np.zeros((2, 8, 8, 16, 4, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "was built for T=4"):
            backbone(np.zeros((2, 8, 8, 8, 3, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "volume_shape"):
            NeuroSTORMBackbone(**{**self.init_kwargs, "volume_shape": (8, 8, 8, 4)})
        with self.assertRaisesRegex(ValueError, "patch_size"):
            NeuroSTORMBackbone(**{**self.init_kwargs, "volume_shape": (9, 8, 8, 4, 1)})
        with self.assertRaisesRegex(ValueError, "divisible by 2"):
            NeuroSTORMBackbone(**{**self.init_kwargs, "volume_shape": (6, 8, 8, 4, 1)})
        with self.assertRaisesRegex(ValueError, "prompt_len"):
            NeuroSTORMBlock4D(12, window_size=(2, 2, 2, 2), prompt_len=-1)

    @pytest.mark.large
    def test_full_size_forward_backward(self):
        backbone = NeuroSTORM.backbone("neurostorm_paper")
        fmri = np.random.RandomState(0).randn(1, 96, 96, 96, 20, 1).astype("float32")
        with tf.GradientTape() as tape:
            features = backbone(fmri, training=True)
            loss = tf.reduce_mean(tf.square(features))
        grads = tape.gradient(loss, backbone.trainable_variables)
        self.assertEqual(tuple(features.shape), (1, 2, 2, 2, 20, 288))
        for var, grad in zip(backbone.trainable_variables, grads):
            self.assertTrue(np.all(np.isfinite(grad)), var.path)
