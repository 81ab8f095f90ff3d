"""Serving latency: gRPC round trip (float32 and float16 payload) against the in-process call.

    .venv/bin/python benchmarks/serving.py                       # full + small SwiFT configs
    .venv/bin/python benchmarks/serving.py --configs small --repeats 50
    .venv/bin/python benchmarks/serving.py --preset PATH --configs preset

For each config it builds a SwiFT classifier with random weights (the architecture, not
trained weights; a preset folder can be given instead), exports it with `tfbrain.export`,
starts the local server (`python -m serving`) in a separate process on 127.0.0.1, and times
sequential requests of one window:

    in-process   the exported `serving_default` signature called in this process
    grpc fp32    PredictionClient -> server -> same signature, float32 payload
    grpc fp16    the same with float16 windows to `serving_default_fp16` (the client casts)
    grpc fp16 (fp16 data)   the window is float16 already, as tfrecords_tools stores it
    rest fp32    RestPredictionClient -> the server's REST API (JSON numbers, columnar format);
                 only where the JSON body fits the server's REST body limit (not the full config)

Latency is wall time per call (p50, p99 over --repeats after --warmup calls; the paths
take turns, call by call); throughput is windows per second of that sequential loop. The aim: grpc fp16 p50 <= in-process p50 + 15%.
On a shared CPU machine the client and server compete for the same cores; numbers are
noisy: the table prints the 1-minute load average (os.getloadavg) measured after each
config's timed calls.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CONFIGS = {
    # the SwiFT paper variant: one 96^3 x 20 window is 67.5 MB in float32
    "full": dict(variant="swift_paper", repeats=10, warmup=2),
    # a small SwiFT (32^3 x 8 window, 1 MB) where transport dominates
    "small": dict(variant="swift_small", repeats=100, warmup=5),
}


def build_model(variant: str | None, preset: str | None):
    from tfbrain.export import load_model_for_export
    from tfbrain.models.swift import SwiFT
    from tfbrain.models.task import FMRIClassifier

    if preset:
        return load_model_for_export(preset)
    import keras
    keras.utils.set_random_seed(0)
    model = FMRIClassifier(SwiFT.backbone(variant), num_classes=1)
    return model, {"task": model.task_metadata()}


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_per_s": float(len(ms) / (ms.sum() / 1e3)),
            "n": len(ms)}


def time_interleaved(calls: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall time of each call, taken in rotation so that load from other processes on a
    shared machine falls on every path alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    return times


def start_server(model_dir: pathlib.Path, workdir: pathlib.Path):
    ready = workdir / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "serving", str(model_dir), "--port", "0",
                                "--rest-port", "0", "--ready-file", str(ready)], cwd=REPO_ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not ready.exists() or len(ready.read_text().split()) < 2:
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")
        time.sleep(0.2)
    grpc_port, rest_port = ready.read_text().split()
    return process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}"


def run_config(name: str, variant: str | None, preset: str | None, repeats: int, warmup: int) -> dict:
    import tensorflow as tf

    from serving.client import PredictionClient
    from serving.rest import DEFAULT_MAX_BODY_BYTES
    from serving.rest_client import RestPredictionClient
    from tfbrain import export

    model, metadata = build_model(variant, preset)
    window_shape = export.input_spec(model)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_bench_"))
    try:
        start = time.perf_counter()
        path = export.export_model(model, workdir / "base", "bench", metadata=metadata, warmup=False,
                                   write_server_config=False)
        export_s = time.perf_counter() - start
        del model
        window = np.random.default_rng(0).standard_normal((1,) + window_shape).astype(np.float32)
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        expected = signature(fmri=tf.constant(window))["logits"].numpy()
        calls = {"in-process": lambda: signature(fmri=tf.constant(window))["logits"].numpy()}
        process, target, rest_target = start_server(path.parent, workdir)
        errors, clients = {}, []
        try:
            # "fp16 data": the window is float16 already (tfrecords_tools stores float16), so
            # the client skips the float32 -> float16 conversion (about 0.1 s for 96^3 x 20).
            window16 = window.astype(np.float16)
            for label, use_fp16, payload in (("grpc fp32", False, window), ("grpc fp16", True, window),
                                             ("grpc fp16 (fp16 data)", True, window16)):
                client = PredictionClient(target, "bench", use_fp16=use_fp16, timeout_s=600)
                clients.append(client)
                got = client.predict(payload)["logits"]
                errors[label] = float(np.max(np.abs(got - expected)))
                calls[label] = (lambda c, x: lambda: c.predict(x))(client, payload)
            rest = RestPredictionClient(rest_target, "bench", timeout_s=600)
            if len(json.dumps(rest.build_body(window))) <= DEFAULT_MAX_BODY_BYTES:
                errors["rest fp32"] = float(np.max(np.abs(rest.predict(window)["logits"] - expected)))
                calls["rest fp32"] = lambda: rest.predict(window)
            rows = time_interleaved(calls, repeats, warmup)
            load = os.getloadavg()[0]
        finally:
            for client in clients:
                client.close()
            process.terminate()
            process.wait(timeout=60)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stats = {label: percentiles(times) for label, times in rows.items()}
    base = stats["in-process"]["p50_ms"]
    for label in errors:
        stats[label]["overhead_vs_in_process"] = stats[label]["p50_ms"] / base - 1
        stats[label]["max_abs_error"] = errors[label]
    return {"config": name, "window_shape": list(window_shape),
            "payload_mb_fp32": float(np.prod(window_shape) * 4 / 2**20), "export_s": export_s,
            "load_1min": load, "rows": stats}


def print_table(results: list[dict]) -> None:
    print("| config | window | payload fp32 | path | p50 ms | p99 ms | windows/s | vs in-process | max abs err "
          "| load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for label, row in result["rows"].items():
            overhead = f"{row['overhead_vs_in_process']:+.1%}" if "overhead_vs_in_process" in row else "-"
            error = f"{row['max_abs_error']:.1e}" if "max_abs_error" in row else "-"
            print(f"| {result['config']} | {'x'.join(map(str, result['window_shape']))} | "
                  f"{result['payload_mb_fp32']:.1f} MB | {label} | {row['p50_ms']:.1f} | "
                  f"{row['p99_ms']:.1f} | {row['throughput_per_s']:.2f} | {overhead} | {error} | "
                  f"{result['load_1min']:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["full", "small"],
                        choices=sorted(CONFIGS) + ["preset"])
    parser.add_argument("--preset", help="preset folder / .keras file for the 'preset' config")
    parser.add_argument("--repeats", type=int, help="timed calls per path (default: per config)")
    parser.add_argument("--warmup", type=int, help="untimed calls per path first")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if "preset" in args.configs and not args.preset:
        parser.error("--configs preset needs --preset PATH")
    results = []
    for name in args.configs:
        config = CONFIGS.get(name, dict(variant=None, repeats=10, warmup=2))
        result = run_config(name, config["variant"], args.preset if name == "preset" else None,
                            args.repeats or config["repeats"], args.warmup or config["warmup"])
        results.append(result)
        print_table([result])
        sys.stdout.flush()
    if len(results) > 1:
        print()
        print_table(results)
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
