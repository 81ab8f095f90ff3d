"""An encoding model on the bundled real run: stimulus categories -> parcel BOLD (Stage 1).

    python -m tfbrain.encoding_demo [--out encoding_demo_out] [--parcels 200] [--epochs 60]

1. features: the six stimulus categories of the studyforrest localizer (body, face, house,
   object, scene, scramble) from events.tsv, as the fraction of each TR a category is on
   screen — one `(T, 6)` stream, no HRF shift (the temporal kernel learns the lag);
2. targets: the run's brain voxels (temporal-mean mask) grouped into `--parcels` spatially
   compact parcels by k-means on voxel coordinates (the run is in native space, so there is
   no MNI atlas), averaged per parcel with `tfrecords_tools.encoding.parcel_means`;
3. train the flow encoder's Stage 1 (MedARC encoder, one subject) on the first 80% of the
   run, in 32-TR windows; test on the last 20% (one run, so the split is in time);
4. print the held-out Pearson r (mean and the best parcels) and write the r map and the
   parcellation as NIfTI in the run's space.

What it shows: parcels in visual cortex follow the block design (any visual category
against the fixation gaps), which is what a 6-category linear encoding model captures
from one run. What it does not show: category selectivity that would survive a proper
test (one run, 156 TRs, 32 held-out frames — the r values are noisy), nor anything about
Stage 2, which needs many subjects and runs.
"""

import argparse
import os

import numpy as np


def category_features(events_path: str, num_frames: int, tr: float) -> tuple[np.ndarray, list]:
    """`(T, K)` fraction of each TR [t·TR, (t+1)·TR) covered by each trial type's events."""
    from tfrecords_tools.events import read_events

    events = read_events(events_path)
    categories = sorted({kind for _, _, kind in events})
    features = np.zeros((num_frames, len(categories)), np.float32)
    for onset, duration, kind in events:
        k = categories.index(kind)
        for t in range(int(onset // tr), min(num_frames, int((onset + duration) // tr) + 1)):
            overlap = min(onset + duration, (t + 1) * tr) - max(onset, t * tr)
            features[t, k] += max(overlap, 0.0) / tr
    return features, categories


def spatial_parcellation(mask: np.ndarray, num_parcels: int, seed: int = 0,
                         iterations: int = 20) -> np.ndarray:
    """Labels 1..K of k-means clusters of the mask's voxel coordinates (0 outside)."""
    coords = np.argwhere(mask).astype(np.float64)
    rng = np.random.default_rng(seed)
    centres = coords[rng.choice(len(coords), num_parcels, replace=False)]
    for _ in range(iterations):
        assign = np.argmin(((coords[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        for k in range(num_parcels):
            if np.any(assign == k):
                centres[k] = coords[assign == k].mean(0)
    labels = np.zeros(mask.shape, np.int16)
    labels[tuple(coords.astype(int).T)] = assign + 1
    return labels


def run_demo(out_dir: str, num_parcels: int = 200, epochs: int = 60, seed: int = 0) -> dict:
    import keras
    import nibabel as nib

    from tfbrain.metrics.encoding import pearsonr_score
    from tfbrain.models.flow_encoder import FlowEncoderBackbone, FlowStage1Task
    from tfbrain.sample_data import studyforrest_localizer
    from tfrecords_tools.encoding import parcel_means

    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    sample = studyforrest_localizer()
    bold = nib.load(sample["bold"])
    data = np.asarray(bold.dataobj, np.float32)  # (X, Y, Z, T)
    tr = float(bold.header.get_zooms()[3]) or 1.79355
    num_frames = data.shape[-1]
    mean = data.mean(-1)
    mask = mean > 0.2 * np.percentile(mean, 98)
    labels = spatial_parcellation(mask, num_parcels, seed)
    parcellation_path = os.path.join(out_dir, "parcellation.nii.gz")
    nib.save(nib.Nifti1Image(labels, bold.affine), parcellation_path)
    targets, parcel_labels = parcel_means(sample["bold"], parcellation_path)  # (T, V)
    features, categories = category_features(sample["events"], num_frames, tr)

    split = int(0.8 * num_frames)
    centre, scale = targets[:split].mean(0), targets[:split].std(0) + 1e-6
    targets = (targets - centre) / scale  # z-scored with training statistics
    window, stride = 32, 4
    starts = range(0, split - window + 1, stride)
    x_train = np.stack([features[s:s + window] for s in starts])
    y_train = np.stack([targets[None, s:s + window] for s in starts])  # (N, 1, T, V)

    backbone = FlowEncoderBackbone(feature_dims=(len(categories),), num_subjects=1,
                                   target_dim=targets.shape[1], embed_dim=8, num_frames=None,
                                   stream_names=("categories",), encoder_kernel_size=9)
    task = FlowStage1Task(backbone)
    task.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.1),
                 loss=task.default_loss(), jit_compile=False)
    task.fit({"categories": x_train}, y_train, batch_size=8, epochs=epochs, verbose=0)

    # held-out frames: features of the last 20% only (no context from the training part)
    prediction = task.predict({"categories": features[None, split:]}, verbose=0)["prediction"]
    r = pearsonr_score(targets[split:], prediction[0, 0])  # (V,)
    r_volume = np.zeros(mask.shape, np.float32)
    for label, value in zip(parcel_labels, r):
        r_volume[labels == label] = value
    r_map_path = os.path.join(out_dir, "pearson_r.nii.gz")
    nib.save(nib.Nifti1Image(r_volume, bold.affine), r_map_path)
    best = np.argsort(r)[::-1][:5]
    report = {"held_out_frames": num_frames - split, "parcels": int(len(r)),
              "mean_r": float(r.mean()), "median_r": float(np.median(r)),
              "best_parcels": {int(parcel_labels[i]): float(r[i]) for i in best},
              "categories": categories, "r_map": r_map_path,
              "parcellation": parcellation_path}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="encoding_demo_out")
    parser.add_argument("--parcels", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_demo(args.out, args.parcels, args.epochs, args.seed)
    print(f"held-out Pearson r over {report['parcels']} parcels "
          f"({report['held_out_frames']} test TRs): mean {report['mean_r']:.3f}, "
          f"median {report['median_r']:.3f}")
    print("best parcels (label: r):", ", ".join(f"{k}: {v:.2f}"
                                               for k, v in report["best_parcels"].items()))
    print(f"r map: {report['r_map']}\nparcellation: {report['parcellation']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
