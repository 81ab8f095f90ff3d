"""The main job on the bundled real sample, end to end (README command one).

    python -m tfbrain.demo [--out demo_out] [--epochs 12] [--no-serve]

1. prepare: the shipped studyforrest localizer run (40x40x17x156, public domain) ->
   a TFRecord dataset, frames labelled from events.tsv (stimulus category or rest);
2. train: a small SwiFT to tell stimulation windows from rest, on the first 80% of
   the run (test: the last 20%; one subject, so the split is in time, not by
   subject; no validation block), logged to TensorBoard;
3. evaluate: window-level metrics on the held-out test frames, against the majority class;
4. attribute: an Integrated-Gradients map, written as NIfTI in the run's original space;
5. export + serve: a TF-Serving SavedModel, served by the local gRPC server and
   queried with the real PredictionService client.
Prints where everything went.
"""

import argparse
import os
import pathlib
import sys
import time


def demo_config(dataset_dir: str, output_dir: str, epochs: int) -> dict:
    """A small SwiFT on 4-frame (7 s) windows of the 48x48x24 sample grid.

    Stimulus blocks last ~9 frames and rest ~4-5, so short windows keep both classes
    (a window's label is the majority of its frames, events shifted by 5 s for the HRF).
    """
    return {
        "data": {"dataset_dir": dataset_dir, "window": 4, "stride": 1, "eval_stride": 1,
                 "batch_size": 8, "eval_batch_size": 16, "train_split": "train",
                 "val_split": "val", "test_split": "test", "time_split": [0.8, 0.0, 0.2],
                 "shuffle_buffer": 64,
                 "label_groups": {"rest": ["rest"],
                                  "stimulus": ["body", "face", "house", "object", "scene", "scramble"]}},
        "model": {"variant": "swift_small",
                  "backbone": {"patch_size": [4, 4, 4, 1], "hidden_dim": 16, "depths": [1, 1],
                               "num_heads": [2, 4], "first_window_size": [3, 3, 3, 4],
                               "window_size": [3, 3, 3, 4], "last_layer_full_msa": True,
                               "dropout_rate": 0.0},
                  "dropout_rate": 0.2},
        # ~2/3 of the windows show a stimulus: weight the classes equally so the
        # decision at logit 0 is not just the majority class
        "task": {"type": "classification", "balance_classes": True},
        "optim": {"learning_rate": 5e-4, "weight_decay": 0.05, "epochs": epochs,
                  "warmup_fraction": 0.1, "clip_norm": 1.0, "jit_compile": True},
        # one run: no validation block (it would leave too few training windows); the model
        # is the last epoch's, and the last 20% of the run is scored once, at the end
        "run": {"output_dir": output_dir, "seed": 1},
        "tensorboard": {"enabled": True},
    }


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--epochs", type=int, default=12)  # more overfits the ~120 windows
    parser.add_argument("--no-serve", action="store_true", help="skip export + serving")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # TensorFlow's native start-up lines (CUDA probing, CPU notes) off the demo's output,
    # as the tfbrain CLI does
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tfbrain.cli import _import_tensorflow_quietly
    _import_tensorflow_quietly()

    import tfrecords_tools
    from tfbrain.sample_data import studyforrest_localizer
    from tfbrain.training.config import TrainConfig
    from tfbrain.training.metrics import format_report, write_report
    from tfbrain.training.trainer import train

    sample = studyforrest_localizer()
    started = time.time()

    t = step("1. prepare: NIfTI -> TFRecords")
    dataset_dir = str(out / "dataset")
    runs = [tfrecords_tools.Run(path=sample["bold"], subject="forrest01", events_path=sample["events"])]
    # voxel-wise z-scoring after removing each voxel's quadratic drift keeps the BOLD
    # fluctuations and drops anatomy and scanner drift, which a small model trained on
    # ~120 windows of one raw (not motion-corrected) run cannot learn to ignore
    config = tfrecords_tools.PreprocessConfig(target_shape=(48, 48, 24), mask_method="mean",
                                              normalization="voxelwise", detrend_order=2,
                                              min_frames=8)
    print(tfrecords_tools.convert(runs, dataset_dir, config=config, workers=0, use_events=True,
                                  progress=False))
    print(f"({time.time() - t:.1f} s)")

    t = step("2. train: SwiFT, stimulation vs rest (TensorBoard logged)")
    train_config = TrainConfig.from_dict(demo_config(dataset_dir, str(out / "run"), args.epochs))
    summary = train(train_config, verbose=2)
    history = summary["history"]
    print(f"training loss {history[0]['loss']:.3f} (epoch 1) -> {history[-1]['loss']:.3f} "
          f"(epoch {len(history)}); {time.time() - t:.0f} s")

    t = step("3. evaluate: held-out test frames (last 20% of the run)")
    report = summary["report"]
    test = report.get(train_config.data.test_split)
    majority = None
    if test:
        print(format_report({"window": test["window"]}))  # one subject: no subject-level row
        majority = test["window"]["majority_accuracy"]
        print(f"majority-class accuracy on the same windows: {majority:.3f}")
    write_report(out / "demo_report.json", {"report": report, "majority_accuracy": majority,
                                            "history": history})

    t = step("4. attribute: Integrated Gradients -> NIfTI in the original space")
    from tfbrain.models.loading import load_preset
    from tfbrain.training.attribution import write_attribution

    best = load_preset(summary["best"])
    attribution = write_attribution(best, dataset_dir, "forrest01", str(out / "attribution_ig.nii.gz"),
                                    window=train_config.data.window, stride=8, steps=16)
    print(f"{attribution['nifti']} shape {attribution['shape']} from {attribution['num_windows']} "
          f"windows ({time.time() - t:.0f} s)")

    served = None
    if not args.no_serve:
        t = step("5. export for TF-Serving, serve locally, query over gRPC")
        served = _export_and_query(summary["best"], out, dataset_dir, train_config)
        print(f"({time.time() - t:.0f} s)")

    print("\n=== where everything went ===")
    print(f"dataset (TFRecords):   {dataset_dir}")
    print(f"run folder:            {summary['output_dir']}  (best/, final/, state/, report.json)")
    print(f"TensorBoard:           tensorboard --logdir {summary['tensorboard']} --host 127.0.0.1")
    print(f"evaluation report:     {out / 'demo_report.json'}")
    print(f"attribution map:       {attribution['nifti']}")
    if served:
        print(f"TF-Serving model base: {served['model_base']}  (version {served['version']})")
    print(f"total time:            {time.time() - started:.0f} s")
    return 0


def _export_and_query(best_dir, out, dataset_dir, train_config) -> dict:
    """Export the best model, start `python -m serving` on a free port, query it."""
    import subprocess

    import numpy as np

    import tfrecords_tools
    from serving.client import PredictionClient
    from tfbrain.export import export_preset
    from tfbrain.models.loading import load_preset

    model_base = out / "models"
    exported = export_preset(best_dir, model_base, "swift_demo")
    print(f"exported {exported}")
    ready = out / "server.port"
    ready.unlink(missing_ok=True)
    log = open(out / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "serving", "--model-base", str(model_base),
                               "--port", "0", "--ready-file", str(ready)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not ready.exists():
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the local server did not start; see {out / 'server.log'}")
            time.sleep(0.5)
        port = ready.read_text().strip()
        window = next(iter(tfrecords_tools.windows(dataset_dir, None, window=train_config.data.window,
                                                   shuffle=False, seed=0)))[0].numpy()
        with PredictionClient(f"127.0.0.1:{port}", "swift_demo", use_fp16=True) as client:
            served = client.predict(window[None])
        local = np.asarray(load_preset(best_dir)(window[None])["logits"])
        print(f"gRPC Predict on 127.0.0.1:{port} (float16 payload): "
              + ", ".join(f"{k}={np.round(np.asarray(v), 4).tolist()}" for k, v in sorted(served.items()))
              + f"; in-process logit {np.round(local, 4).tolist()}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return {"model_base": str(model_base), "version": pathlib.Path(str(exported)).name}


if __name__ == "__main__":
    sys.exit(main())
