import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.layers.transformer_block import TransformerBlock
from tfbrain.models.bixt import BiXT, BiXTBackbone
from tfbrain.models.bixt.bixt_presets import BIXT_VARIANTS, UPSTREAM_PARAMETER_COUNTS
from tfbrain.models.registry import create_backbone, get_family, resolve_variant
from tfbrain.models.task import FMRIClassifier, FMRIRegressor

TINY = BIXT_VARIANTS["bixt_tiny"]  # (8, 8, 8, 4, 1) windows, 4^3 patches: 32 tokens, 8 latents
IMAGE = dict(volume_shape=(16, 24, 3), patch_size=8, num_latents=4, latent_dim=16, depth=2,
             sa_num_heads=2, ca_num_heads=2)


def fmri_batch(batch=2, shape=TINY["volume_shape"], seed=0):
    return np.random.default_rng(seed).normal(size=(batch,) + tuple(shape)).astype("float32")


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


class BiXTBackboneTest(TestCase):
    def test_backbone_basics(self):
        # forward shape, JSON config round trip, finite gradients for every trainable variable
        backbone = self.run_backbone_test(BiXTBackbone, TINY, fmri_batch(3), (3, 8, 16))
        symbolic = backbone(keras.KerasTensor((None,) + TINY["volume_shape"]))
        self.assertEqual(tuple(symbolic.shape), (None, 8, 16))
        self.assertEqual(backbone.num_tokens, 32)
        self.assertEqual(backbone.pooling, "latent_mean")

    def test_tokenizer_options(self):
        for overrides, tokens in ((dict(patch_size=(4, 4, 4, 2)), 16),
                                  (dict(patch_size=(4, 4, 4, 1), patch_stride=(2, 2, 2, 1)), 256)):
            backbone = BiXTBackbone(**{**TINY, **overrides})
            self.assertEqual(backbone.num_tokens, tokens)
            self.assertEqual(tuple(backbone(fmri_batch(1)).shape), (1, 8, 16))

    def test_image_backbones(self):
        image = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype("float32")
        for overrides, tokens in ((dict(), 6), (dict(patch_stride=4), 24),
                                  (dict(patch_size=16, patch_stride=4), 24),
                                  (dict(tokenizer="conv"), 6)):
            kwargs = {**IMAGE, **overrides}
            backbone = self.run_backbone_test(BiXTBackbone, kwargs, image, (2, 4, 16))
            self.assertEqual(backbone.num_tokens, tokens)
            self.assertEqual(backbone.input.name.split(":")[0], "image")

    def test_dense_output_gives_token_model_with_gradients(self):
        backbone = BiXTBackbone(**TINY, dense_output=True)
        tokens_model = backbone.token_model()
        fmri = fmri_batch()
        self.assertEqual(tuple(tokens_model(fmri).shape), (2, 32, 16))
        last = backbone.get_layer("blocks_1")
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tokens_model(fmri, training=True) ** 2)
        grads = tape.gradient(loss, last.cross_attention.token_side["mlp"].trainable_weights)
        self.assertTrue(all(g is not None and np.all(np.isfinite(g)) for g in grads))
        with self.assertRaisesRegex(ValueError, "dense_output=True"):
            BiXTBackbone(**TINY).token_model()
        one_sided = BiXTBackbone(**TINY).get_layer("blocks_1").cross_attention
        self.assertEqual(list(one_sided.token_side), ["norm1"])

    def test_classifier_head_is_mean_norm_linear(self):
        backbone = BiXTBackbone(**TINY)
        model = FMRIClassifier(backbone, num_classes=3)
        norm, head = model.get_layer("head_norm"), model.get_layer("head")
        self.assertAlmostEqual(norm.epsilon, 1e-6)
        for weight in norm.weights + head.weights:
            weight.assign(np.random.default_rng(1).normal(size=weight.shape))
        fmri = fmri_batch()
        pooled = np.asarray(backbone(fmri)).mean(axis=1)
        normed = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(
            pooled.var(-1, keepdims=True) + 1e-6) * norm.gamma.numpy() + norm.beta.numpy()
        expected = normed @ head.kernel.numpy() + head.bias.numpy()
        self.assertAllClose(model(fmri)["logits"], expected, atol=1e-5, rtol=1e-5)
        self.assertIsNotNone(FMRIRegressor(backbone).get_layer("head_norm"))

    def test_dropout_and_drop_path_only_in_training(self):
        backbone = BiXTBackbone(**TINY, sa_dropout_rate=0.1, ca_dropout_rate=0.1,
                                ca_attention_dropout_rate=0.1, sa_drop_path_rate=0.2,
                                ca_drop_path_rate=0.2)
        fmri = fmri_batch()
        self.assertAllClose(backbone(fmri), backbone(fmri))
        self.assertFalse(np.allclose(backbone(fmri, training=True), backbone(fmri, training=True)))

    def test_xla_forward_equals_eager(self):
        backbone = BiXTBackbone(**TINY)
        fmri = fmri_batch()
        compiled = tf.function(lambda x: backbone(x), jit_compile=True)
        self.assertAllClose(compiled(fmri), backbone(fmri), atol=1e-5, rtol=1e-5)

    def test_fit_two_steps_with_and_without_xla(self):
        fmri = fmri_batch(4)
        labels = np.array([[0], [1], [0], [1]], "float32")
        for jit_compile in (False, True):
            keras.utils.set_random_seed(1)
            model = FMRIClassifier(create_backbone("bixt_tiny"))
            model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                          loss={"logits": keras.losses.BinaryCrossentropy(from_logits=True)},
                          jit_compile=jit_compile)
            before = [w.numpy().copy() for w in model.trainable_weights]
            history = model.fit(fmri, {"logits": labels}, batch_size=2, epochs=1, verbose=0)
            self.assertTrue(np.isfinite(history.history["loss"][0]), f"jit={jit_compile}")
            moved = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
            self.assertTrue(all(moved), f"jit_compile={jit_compile}: some weights did not move")

    def test_preset_round_trip(self):
        backbone = BiXTBackbone(**TINY)
        folder = self.get_temp_dir() + "/bixt"
        backbone.save_to_preset(folder)
        restored = BiXTBackbone.from_preset(folder)
        fmri = fmri_batch()
        self.assertAllClose(restored(fmri), backbone(fmri))

    def test_classifier_preset_round_trip(self):
        model = FMRIClassifier(BiXTBackbone(**TINY), num_classes=3)
        folder = self.get_temp_dir() + "/bixt_classifier"
        model.save_to_preset(folder)
        restored = FMRIClassifier.from_preset(folder)
        fmri = fmri_batch()
        self.assertAllClose(restored(fmri)["logits"], model(fmri)["logits"])
        self.assertIsNotNone(restored.get_layer("head_norm"))

    def test_mixed_precision(self):
        reference = BiXTBackbone(**TINY, layer_scale_init=0.1)
        fmri = fmri_batch()
        for policy, atol in (("mixed_float16", 5e-3), ("mixed_bfloat16", 3e-2)):
            backbone = BiXTBackbone(**TINY, layer_scale_init=0.1, dtype=policy)
            backbone.set_weights(reference.get_weights())
            out = np.asarray(backbone(fmri), "float32")
            self.assertAllClose(out, reference(fmri), atol=atol, rtol=0)

    def test_registry(self):
        spec, variant = resolve_variant("bixt")
        self.assertEqual((spec.name, variant), ("bixt", "bixt_fmri_ti"))
        self.assertEqual(spec.backbone_class, BiXTBackbone)
        self.assertEqual(spec.input_kind, "fmri_window")
        for name in (spec.default_variant, spec.tiny_variant):
            self.assertEqual(len(spec.variants[name]["volume_shape"]), 5)
        self.assertIs(get_family("bixt").converter.__name__, "convert_bixt")

    def test_ti16_parameter_count_equals_upstream(self):
        model = FMRIClassifier(BiXT.backbone("bixt_ti_l64_p16"), num_classes=1000)
        self.assertEqual(trainable_count(model), 15_121_192)
        self.assertEqual(model.backbone.num_tokens, 196)

    @pytest.mark.large
    def test_all_upstream_parameter_counts(self):
        for name, count in UPSTREAM_PARAMETER_COUNTS.items():
            model = FMRIClassifier(BiXT.backbone(name), num_classes=1000)
            self.assertEqual(trainable_count(model), count, name)

    @pytest.mark.large
    def test_fmri_ti_reads_a_whole_window(self):
        backbone = BiXT.backbone("bixt_fmri_ti")
        self.assertEqual(backbone.num_tokens, 34_560)
        self.assertEqual(tuple(backbone.output.shape), (None, 64, 192))
        self.assertEqual(tuple(backbone(fmri_batch(1, (96, 96, 96, 20, 1))).shape), (1, 64, 192))

    def test_bad_inputs_name_what_was_expected(self):
        backbone = BiXTBackbone(**TINY)
        with self.assertRaisesRegex(ValueError, r"\(batch, 8, 8, 8, 4, 1\).*rank 5"):
            backbone(np.zeros((1, 8, 8, 8, 4), "float32"))
        with self.assertRaisesRegex(ValueError, r"\(batch, 8, 8, 8, 4, 1\).*\(1, 8, 8, 16, 4, 1\)"):
            backbone(np.zeros((1, 8, 8, 16, 4, 1), "float32"))
        with self.assertRaisesRegex(ValueError, "axis 2 \\(6\\).*multiple of the patch stride"):
            BiXTBackbone(**{**TINY, "volume_shape": (8, 8, 6, 4, 1)})
        with self.assertRaisesRegex(ValueError, "axis 3 \\(4\\).*multiple"):
            BiXTBackbone(**{**TINY, "patch_size": (4, 4, 4, 3)})
        with self.assertRaisesRegex(ValueError, "`volume_shape` must be"):
            BiXTBackbone(**{**TINY, "volume_shape": (8, 8, 8, 1)})
        with self.assertRaisesRegex(ValueError, "conv tokenizer is for images"):
            BiXTBackbone(**TINY, tokenizer="conv")
        with self.assertRaisesRegex(ValueError, r"patch_size` in \(4, 8, 16\)"):
            BiXTBackbone(**{**IMAGE, "volume_shape": (12, 12, 3), "patch_size": 2,
                            "tokenizer": "conv"})
        with self.assertRaisesRegex(ValueError, "tokenizer"):
            BiXTBackbone(**TINY, tokenizer="mlp")
        with self.assertRaisesRegex(ValueError, "ca_num_heads"):
            BiXTBackbone(**{**TINY, "ca_num_heads": 3})
        with self.assertRaisesRegex(ValueError, "patch_size` needs 4 entries"):
            BiXTBackbone(**{**TINY, "patch_size": (4, 4, 4)})


def graph_flops(model, input_shape):
    """Float operations of the model's forward graph, as TensorFlow's profiler counts them
    (matmuls and convolutions: 2 per multiply-add)."""
    fn = tf.function(lambda x: model(x)).get_concrete_function(
        tf.TensorSpec((1,) + tuple(input_shape), tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph=fn.graph, options=options).total_float_ops


class LinearCostTest(TestCase):
    def test_doubling_tokens_doubles_flops_where_full_attention_quadruples(self):
        kwargs = dict(patch_size=(2, 2, 2, 1), num_latents=8, latent_dim=16, depth=2,
                      sa_num_heads=2, ca_num_heads=2)
        bixt = [graph_flops(BiXTBackbone(volume_shape=(8, 8, w, 4, 1), **kwargs), (8, 8, w, 4, 1))
                for w in (16, 32)]  # 512 -> 1,024 tokens
        self.assertGreater(bixt[1] / bixt[0], 1.8)
        self.assertLess(bixt[1] / bixt[0], 2.1)
        full = []
        for num_tokens in (512, 1024):
            tokens = keras.Input((num_tokens, 16))
            block = TransformerBlock(16, 2, layer_norm_epsilon=1e-6)
            full.append(graph_flops(keras.Model(tokens, block(tokens)), (num_tokens, 16)))
        self.assertGreater(full[1] / full[0], 3.5)


class BiXTAttributionTest(TestCase):
    def test_integrated_gradients(self):
        from tfbrain.training.attribution import integrated_gradients

        model = FMRIClassifier(create_backbone("bixt_tiny"), num_classes=2)
        attribution = integrated_gradients(model, fmri_batch(1)[0], target=1, steps=4)
        self.assertEqual(attribution.shape, TINY["volume_shape"])
        self.assertTrue(np.all(np.isfinite(attribution)))
        self.assertGreater(np.abs(attribution).sum(), 0)


class BiXTExportTest(TestCase):
    @pytest.mark.large
    def test_saved_model_signatures_equal_in_process(self):
        from tfbrain.export import export_model

        model = FMRIClassifier(create_backbone("bixt_tiny"), num_classes=3)
        version_dir = export_model(model, self.get_temp_dir(), "bixt")
        loaded = tf.saved_model.load(str(version_dir))
        fmri = fmri_batch()
        served = loaded.signatures["serving_default"](fmri=tf.constant(fmri))
        self.assertAllClose(served["logits"], model(fmri)["logits"], atol=1e-6)
        embedding = loaded.signatures["embed"](fmri=tf.constant(fmri))["embedding"]
        self.assertAllClose(embedding, model.embed(fmri), atol=1e-6)


class BiXTPointSetTest(TestCase):
    def test_parcel_tokens_with_centroid_encoding(self):
        rng = np.random.default_rng(0)
        centroids = rng.uniform(-60, 60, size=(10, 3))  # mm
        kwargs = dict(volume_shape=(10, 6), coordinates=centroids.tolist(), num_latents=4,
                      latent_dim=16, depth=2, sa_num_heads=2, ca_num_heads=2)
        series = rng.normal(size=(2, 10, 6)).astype("float32")  # (B, parcels, frames)
        backbone = self.run_backbone_test(BiXTBackbone, kwargs, series, (2, 4, 16))
        self.assertEqual(backbone.input.name.split(":")[0], "points")
        dense = BiXTBackbone(**kwargs, dense_output=True)  # parcel-wise outputs
        self.assertEqual(tuple(dense.token_model()(series).shape), (2, 10, 16))
        table = backbone.get_layer("fourier_pos_encode").pos.numpy()
        self.assertEqual(table.shape, (10, 96))
        self.assertGreater(np.abs(table[:, 0]).max(), 0.5)  # points differ in their encoding
        with self.assertRaisesRegex(ValueError, "needs `coordinates` of shape \\(10, k\\)"):
            BiXTBackbone(**{**kwargs, "coordinates": centroids[:5].tolist()})
        with self.assertRaisesRegex(ValueError, "`coordinates` is for point-set inputs"):
            BiXTBackbone(**TINY, coordinates=centroids.tolist())
