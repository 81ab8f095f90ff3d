"""Streaming 4D NIfTI through sharded TFRecords and tf.data.

Convert once (`tfbrain prepare ...` or `convert(runs, output_dir)`), then stream windows:

    ds = tfrecords_tools.windows("/data/hcp_tfr", split="train", window=20, batch_size=4)
    for window, label, subject in ds: ...  # window (4, 96, 96, 96, 20, 1)

See docs/tfrecords_tools.md for the record schema and dataset.json.
"""

import os as _os

# The default CPU allocator returns every large buffer to the OS, so each window (35-71 MB)
# is page-faulted in afresh: that cost as much as the gather onto the grid itself, and halved
# the windows/s of uncompressed shards (docs/tfrecords_tools.md). The BFC allocator reuses
# them. Same setting as `import tfbrain`; read when TF first allocates; an explicit
# TF_CPU_ALLOCATOR_USE_BFC=false wins.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfrecords_tools.errors import BadInputError
from tfrecords_tools.preprocess import PreprocessConfig, prepare_run
from tfrecords_tools.reader import (num_windows, original_run_key, read_frames, run_info, run_segments,
                                    split_names, window_index, windows)
from tfrecords_tools.schema import load_dataset_info
from tfrecords_tools.sources import Run, runs_from_bids, runs_from_files, runs_from_table
from tfrecords_tools.splits import load_splits, make_splits, save_splits
from tfrecords_tools.writer import ConversionSummary, convert


def to_original_space(volume, dataset_dir: str, run: str, fill: float = 0.0):
    """Write a (D, H, W[, K]) map on the stored grid back into `run`'s original NIfTI space.

    `run` is a run key, the id of a subject with one run, or the original key of a run that
    scrubbing split into segments (they share one grid). Returns a nibabel image.
    """
    from tfrecords_tools.preprocess import to_original_space as _to_original_space

    return _to_original_space(volume, run_info(dataset_dir, run), fill=fill)


__all__ = ["BadInputError", "ConversionSummary", "PreprocessConfig", "Run", "convert", "load_dataset_info",
           "load_splits", "make_splits", "num_windows", "original_run_key", "prepare_run", "read_frames",
           "run_info", "run_segments",
           "runs_from_bids", "runs_from_files", "runs_from_table", "save_splits", "to_original_space",
           "windows"]
