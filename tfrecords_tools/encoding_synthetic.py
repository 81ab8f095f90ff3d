"""A synthetic encoding cohort with known ground truth: stimulus features -> HRF-convolved
linear parcel responses + noise, for several subjects watching the same runs.

Per run, every feature stream is a smooth random time series (AR(1), unit variance). A
shared linear map takes the streams (a layered stream through its mean over layers, as
MedARC's avg pooling assumes) to `num_factors` latent factors; each subject reads
the factors out to V parcels with its own weights (shared part + subject part), the result
is convolved with the canonical double-gamma HRF (SPM's shape, sampled at the TR),
standardised per parcel, and Gaussian noise of std `noise_std` is added. Because the
generator keeps the noiseless signal, it knows the noise ceiling: the Pearson r between
the signal and the noisy response, i.e. the best any predictor can reach.

Letters: T frames (TRs), D stream width, L layers of a stream, S subjects, V parcels.
"""

import dataclasses
import math

import numpy as np


def canonical_hrf(tr: float, duration: float = 32.0) -> np.ndarray:
    """SPM's double-gamma HRF (peak 6 s, undershoot 16 s, ratio 1/6) sampled every `tr` s,
    normalised to unit sum."""
    t = np.arange(0.0, duration, tr)

    def gamma_pdf(x, shape):
        return np.where(x > 0, x ** (shape - 1) * np.exp(-x) / math.gamma(shape), 0.0)

    hrf = gamma_pdf(t, 6.0) - gamma_pdf(t, 16.0) / 6.0
    return hrf / hrf.sum()


@dataclasses.dataclass
class SyntheticEncodingCohort:
    """What `make_encoding_cohort` returns.

    Attributes:
        features: {run: [stream arrays `(T, D)` or `(T, L, D)`]}.
        responses: {run: `(S, T, V)`} noisy responses.
        signals: {run: `(S, T, V)`} the noiseless responses.
        feature_dims: per stream D or (L, D), in the order of `features`.
        tr: float seconds.
    """

    features: dict
    responses: dict
    signals: dict
    feature_dims: tuple
    tr: float

    def noise_ceiling(self, runs=None) -> float:
        """Mean over subjects and parcels of r(signal, response) on `runs` (default all)."""
        runs = list(self.responses) if runs is None else list(runs)
        signal = np.concatenate([self.signals[r] for r in runs], axis=1)  # (S, ΣT, V)
        response = np.concatenate([self.responses[r] for r in runs], axis=1)
        rs = []
        for s in range(signal.shape[0]):
            a = signal[s] - signal[s].mean(0)
            b = response[s] - response[s].mean(0)
            rs.append((a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)))
        return float(np.mean(rs))

    def windows(self, runs, window: int, stride: int | None = None):
        """Stack `(window)`-TR windows of `runs`: (list of stream arrays `(N, window, ...)`,
        responses `(N, S, window, V)`)."""
        stride = stride or window
        streams = [[] for _ in self.feature_dims]
        targets = []
        for run in runs:
            length = self.responses[run].shape[1]
            for start in range(0, length - window + 1, stride):
                for i, stream in enumerate(self.features[run]):
                    streams[i].append(stream[start:start + window])
                targets.append(self.responses[run][:, start:start + window])
        return [np.stack(s).astype(np.float32) for s in streams], np.stack(targets).astype(
            np.float32)


def make_encoding_cohort(num_subjects: int = 3, num_runs: int = 6, run_length: int = 200,
                         feature_dims=(8, (2, 6)), num_targets: int = 16, num_factors: int = 4,
                         subject_weight: float = 0.5, noise_std: float = 1.0, tr: float = 2.0,
                         smoothness: float = 0.7, seed: int = 0) -> SyntheticEncodingCohort:
    """Generate the cohort (see the module docstring).

    Args:
        num_subjects, num_runs, run_length: S, runs (movies), TRs per run.
        feature_dims: per stream D or (L, D).
        num_targets: V parcels.
        num_factors: latent factors between features and parcels.
        subject_weight: scale of the subject-specific readout relative to the shared one.
        noise_std: noise std relative to the (unit-variance) signal; the noise ceiling is
            about 1 / sqrt(1 + noise_std²).
        tr: seconds per frame (sets the HRF sampling).
        smoothness: AR(1) coefficient of the features.
        seed: int.
    """
    rng = np.random.default_rng(seed)
    dims = tuple(int(d) if isinstance(d, (int, np.integer)) else (int(d[0]), int(d[1]))
                 for d in feature_dims)
    # layered streams act through their layer mean (as MedARC's avg pooling assumes)
    stream_maps = [rng.normal(0, 1, (d if isinstance(d, int) else d[1], num_factors))
                   for d in dims]
    shared_readout = rng.normal(0, 1, (num_factors, num_targets))
    subject_readouts = [shared_readout + subject_weight * rng.normal(0, 1, shared_readout.shape)
                        for _ in range(num_subjects)]
    hrf = canonical_hrf(tr)
    features, responses, signals = {}, {}, {}
    for r in range(num_runs):
        run = f"run-{r + 1:02d}"
        streams, factors = [], np.zeros((run_length, num_factors))
        for dim, stream_map in zip(dims, stream_maps):
            width = dim if isinstance(dim, int) else dim[0] * dim[1]
            x = np.zeros((run_length, width))
            x[0] = rng.normal(0, 1, width)
            for t in range(1, run_length):
                x[t] = smoothness * x[t - 1] + math.sqrt(1 - smoothness ** 2) * rng.normal(0, 1, width)
            stream = x if isinstance(dim, int) else x.reshape(run_length, *dim)
            drive = stream if isinstance(dim, int) else stream.mean(axis=1)  # (T, D)
            factors += drive @ stream_map / math.sqrt(drive.shape[1])
            streams.append(stream.astype(np.float32))
        features[run] = streams
        signal = np.stack([factors @ readout for readout in subject_readouts])  # (S, T, V)
        signal = np.apply_along_axis(lambda v: np.convolve(v, hrf)[:run_length], 1, signal)
        signals[run] = signal
    # standardise each subject's parcels over all runs, then add noise
    stacked = np.concatenate(list(signals.values()), axis=1)
    mean, std = stacked.mean(axis=1, keepdims=True), stacked.std(axis=1, keepdims=True) + 1e-8
    for run in signals:
        signals[run] = ((signals[run] - mean) / std).astype(np.float32)
        responses[run] = (signals[run] + noise_std * rng.normal(0, 1, signals[run].shape)
                          ).astype(np.float32)
    return SyntheticEncodingCohort(features, responses, signals, dims, tr)
