"""The two stages as tasks: fitting (jit on and off), the synthetic cohort against its noise
ceiling, Stage-2 sampling, the overfit check, config round trips and bad inputs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_case import TestCase
from tfbrain.models.flow_encoder import (FlowCFMTask, FlowEncoderBackbone, FlowMatchingHead,
                                         FlowStage1Task)
from tfbrain.metrics.encoding import encoding_pearson
from tfbrain.models.registry import get_task_class
from tfrecords_tools.encoding_synthetic import make_encoding_cohort

# smallest useful Stage 2: one 8-frame window, U-Net (16, 16), latent 8
TINY_BACKBONE = dict(feature_dims=(6, (2, 4)), num_subjects=2, target_dim=12, embed_dim=8,
                     num_frames=8, encoder_kernel_size=3)
TINY_HEAD = dict(latent_dim=8, subject_embed_dim=4, num_steps=3,
                 estimator=dict(channels=(16, 16), head_dim=8, num_heads=2, num_mid_blocks=1,
                                dropout_rate=0.0))


def tiny_batch(batch=2, frames=8, seed=0):
    rng = np.random.default_rng(seed)
    streams = {"stream_0": rng.normal(size=(batch, frames, 6)).astype("float32"),
               "stream_1": rng.normal(size=(batch, frames, 2, 4)).astype("float32")}
    return streams, rng.normal(size=(batch, 2, frames, 12)).astype("float32")


class FlowStage1TaskTest(TestCase):
    def test_registered(self):
        self.assertIs(get_task_class("flow_stage1"), FlowStage1Task)
        self.assertIs(get_task_class("flow_cfm"), FlowCFMTask)

    def test_fit_jit_on_and_off(self):
        streams, targets = tiny_batch(batch=4)
        for jit_compile in (False, True):
            task = FlowStage1Task(FlowEncoderBackbone(**TINY_BACKBONE))
            task.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task.default_loss(),
                         metrics=task.default_metrics(), jit_compile=jit_compile)
            history = task.fit(streams, targets, batch_size=2, epochs=3, verbose=0).history
            self.assertTrue(np.all(np.isfinite(history["loss"])))
            self.assertLess(history["loss"][-1], history["loss"][0])
            self.assertIn("pearson_r", history)
        # config round trip of the task (backbone rebuilt from its config)
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(task)))
        restored = keras.saving.deserialize_keras_object(config)
        self.assertIsInstance(restored, FlowStage1Task)
        self.assertEqual(restored.backbone.get_config(), task.backbone.get_config())
        self.assertEqual(tuple(restored.embed(streams).shape), (4, 8))

    def test_synthetic_cohort_reaches_noise_ceiling(self):
        """Stage 1 gets within 10% of the generator's noise ceiling on a held-out run."""
        keras.utils.set_random_seed(0)
        cohort = make_encoding_cohort(num_subjects=3, num_runs=6, run_length=200,
                                      num_targets=16, seed=0)
        train, test = [f"run-{i:02d}" for i in range(1, 6)], ["run-06"]
        x_train, y_train = cohort.windows(train, 64, 16)
        x_test, y_test = cohort.windows(test, 200)  # whole held-out run, as upstream validates
        backbone = FlowEncoderBackbone(feature_dims=cohort.feature_dims, num_subjects=3,
                                       target_dim=16, embed_dim=8, num_frames=None,
                                       encoder_kernel_size=17)
        task = FlowStage1Task(backbone)
        task.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task.default_loss(),
                     jit_compile=False)
        names = backbone.stream_names
        task.fit(dict(zip(names, x_train)), y_train, batch_size=16, epochs=30, verbose=0)
        prediction = task.predict(dict(zip(names, x_test)), verbose=0)["prediction"]
        _, r = encoding_pearson(y_test, prediction)
        ceiling = cohort.noise_ceiling(test)
        self.assertGreater(ceiling, 0.5)
        self.assertGreaterEqual(r, 0.9 * ceiling, f"r {r:.3f} vs noise ceiling {ceiling:.3f}")


class FlowCFMTaskTest(TestCase):
    def make_task(self, **overrides):
        return FlowCFMTask(FlowEncoderBackbone(**TINY_BACKBONE), **{**TINY_HEAD, **overrides},
                           seed=1)

    def test_fit_sample_and_round_trip(self):
        task = self.make_task()
        streams, targets = tiny_batch()
        frozen = [np.array(v) for v in task.backbone.weights]
        task.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
        history = task.fit(streams, targets, batch_size=2, epochs=2, verbose=0).history
        self.assertTrue(np.all(np.isfinite(history["loss"])))
        for before, after in zip(frozen, task.backbone.weights):  # Stage 1 stays frozen
            self.assertAllClose(np.asarray(after), before, atol=0, rtol=0)

        # every Stage-2 variable gets a finite gradient
        head = task.flow_head
        mean = task.predict_mean(streams)
        with tf.GradientTape() as tape:
            loss = head.loss(targets, mean, seed=3, training=True)
        grads = tape.gradient(loss, task.trainable_variables)
        self.assertEqual(len(grads), len(head.trainable_variables))
        for var, grad in zip(task.trainable_variables, grads):
            self.assertIsNotNone(grad, var.path)
            self.assertTrue(np.all(np.isfinite(tf.convert_to_tensor(grad))), var.path)

        # sampling: shapes, seeds, temperature
        sample = np.asarray(task.sample(streams, seed=5))
        self.assertEqual(sample.shape, (2, 2, 8, 12))
        self.assertAllClose(task.sample(streams, seed=5), sample, atol=0, rtol=0)
        self.assertGreater(np.abs(np.asarray(task.sample(streams, seed=6)) - sample).max(), 1e-4)
        cold_a = task.sample(streams, temperature=0.0, seed=1)
        cold_b = task.sample(streams, temperature=0.0, seed=2)
        self.assertAllClose(cold_a, cold_b, atol=1e-6, rtol=0)
        # one subject per item: the same numbers as the all-subjects call with that noise
        noise = np.random.default_rng(0).normal(size=(4, 8, 8)).astype("float32")
        both = np.asarray(head.sample(mean, 3, 1.0, noise=noise))
        one = head.sample(np.asarray(mean)[:, 1], 3, 1.0, noise=noise[1::2],
                          subject_index=np.array([1, 1]))
        self.assertAllClose(one, both[:, 1], atol=1e-5, rtol=0)
        # export-style: temperature and a stateless seed as tensors in a tf.function
        seed = tf.constant([7, 11], tf.int32)
        graph = tf.function(lambda m, temperature, s: head.sample(m, 3, temperature, seed=s))
        self.assertAllClose(graph(mean, tf.constant(0.5), seed),
                            head.sample(mean, 3, 0.5, seed=seed), atol=1e-5, rtol=0)
        with self.assertRaisesRegex(ValueError, r"subject_index must be in \[0, 2\)"):
            head.sample(np.asarray(mean)[:, 0], 3, subject_index=np.array([0, 2]))

        report = task.encoding_report(streams, targets, num_samples=2)
        self.assertEqual(set(report), {"mean_anchor", "one_sample", "mean_of_samples"})
        self.assertEqual(report["one_sample"]["map"].shape, (2, 12))
        _, anchor_r = encoding_pearson(targets, np.asarray(mean))
        self.assertAllClose(report["mean_anchor"]["mean"], anchor_r, atol=1e-6, rtol=0)

        config = json.loads(json.dumps(keras.saving.serialize_keras_object(task)))
        restored = keras.saving.deserialize_keras_object(config)
        self.assertEqual(restored.flow_head.get_config(), head.get_config())
        self.assertEqual(FlowMatchingHead.from_config(head.get_config()).get_config(),
                         head.get_config())

    def test_overfit_one_batch(self):
        """Upstream's overfit check: with one batch (and its draws of t and noise fixed),
        Stage 2 memorises it; the loss falls to near 0 within a few hundred steps."""
        task = self.make_task()
        head = task.flow_head
        streams, targets = tiny_batch()
        mean = task.predict_mean(streams)
        rng = np.random.default_rng(0)
        t = tf.constant(rng.uniform(0.05, 0.95, size=(4,)).astype("float32"))
        noise = tf.constant(rng.normal(size=(4, 8, 8)).astype("float32"))
        optimizer = keras.optimizers.Adam(1e-2)
        variables = head.trainable_variables

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = head.loss(targets, mean, t=t, noise=noise, training=True)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        first = float(step())
        for _ in range(250):
            last = float(step())
        self.assertLess(last, 0.05 * first, f"loss {first:.3f} -> {last:.3f}")

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, "divisible by 2"):
            FlowCFMTask(FlowEncoderBackbone(**{**TINY_BACKBONE, "num_frames": 7}), **TINY_HEAD)
        with self.assertRaisesRegex(ValueError, "FlowEncoderBackbone"):
            FlowCFMTask(keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))
        with self.assertRaisesRegex(ValueError, "in_channels"):
            self.make_task(estimator=dict(in_channels=8))

    @pytest.mark.large
    def test_fit_jit_compile(self):
        task = self.make_task()
        streams, targets = tiny_batch()
        task.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=True)
        history = task.fit(streams, targets, batch_size=2, epochs=3, verbose=0).history
        self.assertTrue(np.all(np.isfinite(history["loss"])))


class FlowServingTest(TestCase):
    @pytest.mark.large
    def test_saved_model_round_trip(self):
        """predict_mean / sample / sample_from_mean as SavedModel signatures equal the
        in-process numbers; a bad subject index fails with the message in the graph."""
        task = FlowCFMTask(FlowEncoderBackbone(**TINY_BACKBONE), **TINY_HEAD, seed=1)
        streams, _ = tiny_batch()
        functions = task.serving_functions()
        module = tf.Module()
        module.task = task
        folder = self.get_temp_dir()
        tf.saved_model.save(module, folder, signatures={k: f.get_concrete_function()
                                                        for k, f in functions.items()})
        loaded = tf.saved_model.load(folder).signatures
        seed = tf.constant([3, 4], tf.int32)
        temperature = tf.constant(0.7)
        mean = task.predict_mean(streams)
        self.assertAllClose(loaded["predict_mean"](**streams)["mean"], mean, atol=1e-6, rtol=0)
        self.assertAllClose(loaded["sample"](**streams, temperature=temperature,
                                             seed=seed)["samples"],
                            task.flow_head.sample(mean, 3, 0.7, seed=seed), atol=1e-5, rtol=0)
        one = loaded["sample_from_mean"](mean=np.asarray(mean)[:, 0],
                                         subject_index=tf.constant([0, 1]),
                                         temperature=temperature, seed=seed)["samples"]
        self.assertEqual(tuple(one.shape), (2, 8, 12))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "subject_index must be in"):
            loaded["sample_from_mean"](mean=np.asarray(mean)[:, 0],
                                       subject_index=tf.constant([0, 5]),
                                       temperature=temperature, seed=seed)
