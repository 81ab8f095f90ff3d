import numpy as np
import tensorflow as tf

from tests.test_case import TestCase
from tests.tfrecords_tools.test_reader import _dataset
from tfrecords_tools import windows
from tfrecords_tools.augment import Augment, gaussian_noise, gaussian_smoothing, random_shift


class AugmentTest(TestCase):
    def setUp(self):
        super().setUp()
        self.window = tf.random.stateless_normal((8, 8, 8, 4, 1), (1, 2))
        self.seed = tf.constant([3, 4], tf.int64)

    def test_same_transform_for_every_frame(self):
        constant_in_time = tf.tile(self.window[..., :1, :], (1, 1, 1, 4, 1))
        for fn in (random_shift, gaussian_smoothing):
            out = fn(constant_in_time, self.seed).numpy()
            self.assertEqual(out.shape, (8, 8, 8, 4, 1))
            for t in range(1, 4):
                self.assertAllClose(out[..., t, :], out[..., 0, :], atol=1e-5)

    def test_shift_moves_content(self):
        out = random_shift(self.window, self.seed, max_shift=2).numpy()
        self.assertFalse(np.allclose(out, self.window.numpy()))

    def test_deterministic_given_seed(self):
        aug = Augment(max_shift=2, noise_std=0.2, smoothing_sigma=1.0, probability=1.0)
        self.assertAllClose(aug(self.window, self.seed), aug(self.window, self.seed))
        noisy = gaussian_noise(self.window, self.seed, max_std=0.5)
        self.assertAllClose(noisy, gaussian_noise(self.window, self.seed, max_std=0.5))

    def test_in_pipeline(self):
        def batch(seed):
            ds = windows(_dataset(), window=6, augment=Augment(noise_std=0.5, probability=1.0), seed=seed)
            return next(iter(ds))[0].numpy()
        self.assertAllClose(batch(1), batch(1))
        plain = next(iter(windows(_dataset(), window=6, seed=1)))[0].numpy()
        self.assertFalse(np.allclose(plain, batch(1)))
