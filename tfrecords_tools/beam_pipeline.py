"""Cohort conversion on Apache Beam: the local converter's output, written by many machines.

`convert` (the default) converts runs with local processes. A cohort such as HCP (1,075
subjects x 1,200 frames) or UK Biobank (~6,000 x 490) converts faster on a cluster; this
module runs the same conversion as an Apache Beam pipeline, so Dataflow, Flink or Spark can
spread the runs over their workers (`pip install 'tfbrain[beam]'`; docs/beam_conversion.md).

The pipeline calls the local converter's own steps, so both write the same files:

    driver    check_arguments, plan_conversion (checks runs, writes conversion.json)
    workers   per run: reusable_manifest (resume) or convert_run -> shards (and, for brain_only
              storage, masks/<run>) + runs/<run>.json
    one step  finish_dataset -> dataset.json (runs in key order) and splits.json, once

Shards never mix runs and a run's shards are cut by the same rule, so which worker converts
a run changes nothing: the records, shard files and dataset.json equal the local ones.
A retried bundle re-runs `convert_run`, which removes its earlier try first and writes the
same bytes. Bad runs are collected from the workers; without `skip_bad` the last step fails
the pipeline, naming them, and writes no dataset.json.
"""

import logging
import re
import time
from typing import Optional, Sequence

from tfrecords_tools import schema
from tfrecords_tools.errors import BadInputError
from tfrecords_tools.preprocess import PreprocessConfig
from tfrecords_tools.sources import Run
from tfrecords_tools.writer import (ConversionSummary, check_arguments, convert_run, finish_dataset,
                                    output_lock, plan_conversion, reusable_manifest)

logger = logging.getLogger("tfrecords_tools")
METRICS_NAMESPACE = "tfrecords_tools"


def import_beam():
    """`apache_beam`, or an ImportError saying which extra installs it."""
    try:
        import apache_beam
    except ImportError as error:
        raise ImportError("converting with --runner needs Apache Beam: pip install 'tfbrain[beam]' "
                          f"({error})") from None
    return apache_beam


def convert_with_beam(runs: Sequence[Run], output_dir: str, *, config: Optional[PreprocessConfig] = None,
                      compression: str = "GZIP", storage: str = schema.DEFAULT_STORAGE,
                      shard_size_mb: float = 128.0, skip_bad: bool = False,
                      label_type: str = "auto", use_events: bool = False, hrf_delay: float = 5.0,
                      min_coverage: float = 0.5, split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
                      split_seed: int = 0, pipeline_args: Sequence[str] = ()) -> ConversionSummary:
    """Convert `runs` into a dataset folder with an Apache Beam pipeline; re-running resumes.

    Takes the arguments of `writer.convert` (less `workers` and `progress`: the runner decides
    the parallelism and reports progress) and `pipeline_args`, Beam's own command-line options
    (`--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`); without a
    `--runner`, or with `DirectRunner`, the pipeline runs on this machine with Beam's Python
    runner (see `_runner`). Waits for the pipeline to finish.
    Every worker must see the input files at the same POSIX paths (a shared file system, or a
    bucket mounted in the worker container); `output_dir` may also be a `tf.io.gfile` URL
    (gs://...).
    """
    beam = import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    start = time.time()
    config = config or PreprocessConfig()
    output_dir = str(output_dir)
    check_arguments(compression=compression, storage=storage, label_type=label_type,
                    min_coverage=min_coverage, hrf_delay=hrf_delay, shard_size_mb=shard_size_mb,
                    split_fractions=split_fractions)
    summary = ConversionSummary(output_dir=output_dir)

    def bad(error: BadInputError):
        if not skip_bad:
            raise error
        logger.warning("skipping %s", error)
        summary.skipped.append((error.source, error.problem))

    with output_lock(output_dir):  # a local (or shared-mount) folder: one conversion at a time
        runs, settings = plan_conversion(runs, output_dir, config=config, compression=compression,
                                         storage=storage, shard_size_mb=shard_size_mb, label_type=label_type,
                                         use_events=use_events, hrf_delay=hrf_delay,
                                         min_coverage=min_coverage, on_bad=bad)
        # a run's place in the input list orders the bad runs the workers report, as locally
        order = {run.key: i for i, run in enumerate(runs)}
        options = PipelineOptions(list(pipeline_args))
        pipeline = beam.Pipeline(runner=_runner(options), options=options)
        _ = (pipeline
             | "Runs" >> beam.Create(runs)
             | "Spread" >> beam.Reshuffle()  # one run per element, spread over the workers
             | "Convert" >> beam.FlatMap(_convert_or_reuse, output_dir=output_dir, settings=settings)
             | "Collect" >> beam.combiners.ToList()
             | "Finish" >> beam.Map(_finish, output_dir=output_dir, settings=settings,
                                    skipped=list(summary.skipped), order=order, skip_bad=skip_bad,
                                    split_fractions=tuple(split_fractions), split_seed=split_seed))
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as error:  # runners wrap worker errors (DirectRunner: RuntimeError)
            bad_input = _bad_input_in(str(error))
            if bad_input is None:
                raise
            raise bad_input from error

    summary.runs_converted = _counter(result, "runs_converted")
    summary.runs_already_done = _counter(result, "runs_already_done")
    info = schema.load_dataset_info(output_dir)
    summary.skipped = [(entry["source"], entry["reason"]) for entry in info["skipped"]]
    summary.subjects = len(info["subjects"])
    summary.frames = info["num_frames"]
    summary.bytes = sum(s["bytes"] for s in info["shards"])
    summary.seconds = time.time() - start
    return summary


def _runner(options):
    """The runner object for `options`, or None to let Beam pick by `--runner`.

    For the DirectRunner (also Beam's default) this is the in-process Python runner it falls back
    to: Beam's DirectRunner first tries its Prism runner, a Go binary it downloads at run time,
    which a conversion must not do (and cannot on machines without internet access).
    `--direct_num_workers` and `--direct_running_mode` still apply.
    """
    from apache_beam.options.pipeline_options import StandardOptions

    name = options.view_as(StandardOptions).runner
    if name in (None, "DirectRunner", "direct", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None


def _bad_input_in(text: str) -> Optional[BadInputError]:
    """The BadInputError a failed pipeline reports (runners pass worker errors on as text)."""
    match = re.search(r"BadInputError: (.+?)(?: \[while running [^\]]*\])?$", text, re.MULTILINE)
    if match is None:
        return None
    source, _, problem = match.group(1).partition(": ")
    return BadInputError(source, problem)


def _counter_inc(name: str) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter(METRICS_NAMESPACE, name).inc()


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE)
                                          .with_name(name))["counters"]
    except (NotImplementedError, AttributeError, KeyError):  # a runner without metrics
        return 0
    return int(sum(c.committed or 0 for c in counters))


def _convert_or_reuse(run: Run, *, output_dir: str, settings: dict):
    """Per run, on a worker: its earlier manifest if it still holds, else convert it. Bad input
    comes back as a value (the last step decides); anything else fails the bundle, which the
    runner retries."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    manifest = reusable_manifest(run, output_dir)
    if manifest is not None:
        _counter_inc("runs_already_done")
        yield ("done", manifest)
        return
    try:
        manifest = convert_run(run, output_dir, settings)
    except BadInputError as error:
        _counter_inc("runs_bad")
        yield ("bad", (run.key, error.source, error.problem))
        return
    _counter_inc("runs_converted")
    yield ("done", manifest)


def _finish(results: list, *, output_dir: str, settings: dict, skipped: list, order: dict,
            skip_bad: bool, split_fractions: Sequence[float], split_seed: int) -> int:
    """The last step, run once: dataset.json and splits.json, or a failure naming the bad runs."""
    manifests = [value for status, value in results if status == "done"]
    bad = sorted((value for status, value in results if status == "bad"), key=lambda v: order[v[0]])
    if bad and not skip_bad:
        _, source, problem = bad[0]
        others = "; ".join(f"{s}: {p}" for _, s, p in bad[1:6]) + (" ..." if len(bad) > 6 else "")
        raise BadInputError(source, f"{problem} ({len(bad)} bad run(s), so no dataset.json was written"
                                    + (f"; the others: {others})" if others else ")"))
    skipped = list(skipped) + [(source, problem) for _, source, problem in bad]
    info = finish_dataset(output_dir, settings, manifests, skipped,
                          split_fractions=split_fractions, split_seed=split_seed)
    return info["num_runs"]
