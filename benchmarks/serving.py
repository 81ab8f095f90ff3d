"""Serving throughput: windows/s of an exported model through the local gRPC server, by batch
size and input signature (float32, float16), beside the in-process call of the same batch.

    .venv/bin/python benchmarks/serving.py                          # full + small SwiFT configs
    .venv/bin/python benchmarks/serving.py --configs small --rounds 20
    .venv/bin/python benchmarks/serving.py --configs full --batch-sizes 1 4 --rounds 3
    .venv/bin/python benchmarks/serving.py --preset PATH --configs preset

For each config it builds a SwiFT classifier with random weights (the architecture, not
trained weights; a preset folder can be given instead), exports it with `tfbrain.export`
(the serving graph: no XLA, `serving_default` float32 and `serving_default_fp16`), starts the
local server (`python -m serving`, `--max-batch` the largest batch timed) in its own process
on 127.0.0.1 and sends Predict requests of B windows each:

    in-process   the exported `serving_default` signature called in this process (the model's
                 own cost: the floor for the gRPC paths)
    grpc fp32    PredictionClient -> server -> `serving_default`, float32 payload
    grpc fp16    float16 windows (as tfrecords_tools stores them) -> `serving_default_fp16`
    rest fp32    RestPredictionClient -> the server's REST API (JSON numbers), only for batches
                 whose JSON body fits the server's REST body limit (not the full config)

Every (batch size, path) pair is called once per round, in rotation, so that load from other
processes on a shared machine falls on all of them alike; `--warmup` untimed calls first.
Per pair the table gives the median wall time of one request, windows/s (= B / that median),
the speed-up over batch 1 on the same path, the gRPC overhead over the in-process call of the
same batch, the server process's CPU seconds per window (read from /proc: what the server
itself spent, independent of waiting for a core), the median 1-minute load average while it
ran, and the largest difference from the in-process outputs. No assertions.
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
    "full": dict(variant="swift_paper", rounds=3, warmup=1),
    # a small SwiFT (32^3 x 8 window, 1 MB) where transport weighs more
    "small": dict(variant="swift_small", rounds=15, warmup=2),
    # a tiny SwiFT (8^3 x 4) to check the script itself in a minute
    "tiny": dict(variant="swift_tiny", rounds=3, warmup=1),
}
PATHS = ("in-process", "grpc fp32", "grpc fp16", "rest fp32")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_server(model_dir: pathlib.Path, workdir: pathlib.Path, max_batch: int):
    ready = workdir / "port"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "serving", str(model_dir), "--port", "0",
                                "--rest-port", "0", "--ready-file", str(ready),
                                "--max-batch", str(max_batch)],
                               cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not ready.exists() or len(ready.read_text().split()) < 2:  # gRPC port, REST port
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")
        time.sleep(0.2)
    grpc_port, rest_port = ready.read_text().split()
    return process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}"


def time_rotation(calls: dict, rounds: int, warmup: int, server_pid: int) -> dict[str, list]:
    """{label: [(wall s, server CPU s, this process's CPU s, load), ...]}; the calls taken in
    turn, call by call."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            server_cpu = process_cpu_seconds(server_pid)
            own_cpu, start = time.process_time(), time.perf_counter()
            call()
            wall = time.perf_counter() - start
            samples[label].append((wall, process_cpu_seconds(server_pid) - server_cpu,
                                   time.process_time() - own_cpu, os.getloadavg()[0]))
    return samples


def run_config(name: str, variant: str | None, preset: str | None, batch_sizes: list[int],
               rounds: int, warmup: int) -> dict:
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
        path = export.export_model(model, workdir / "base", "bench", metadata=metadata,
                                   warmup=False, write_server_config=False)
        export_s = time.perf_counter() - start
        del model
        rng = np.random.default_rng(0)
        windows = {b: rng.standard_normal((b,) + window_shape).astype(np.float32)
                   for b in batch_sizes}
        windows16 = {b: w.astype(np.float16) for b, w in windows.items()}
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        expected = {b: signature(fmri=tf.constant(w))["logits"].numpy()
                    for b, w in windows.items()}
        process, target, rest_target = start_server(path.parent, workdir, max(batch_sizes))
        clients = {"grpc fp32": PredictionClient(target, "bench", use_fp16=False, timeout_s=1800),
                   "grpc fp16": PredictionClient(target, "bench", use_fp16=True, timeout_s=1800)}
        rest = RestPredictionClient(rest_target, "bench", timeout_s=1800)
        calls, errors = {}, {}
        try:
            for b in batch_sizes:
                calls[(b, "in-process")] = (lambda w: lambda: signature(
                    fmri=tf.constant(w))["logits"].numpy())(windows[b])
                for label, client in clients.items():
                    payload = windows16[b] if label == "grpc fp16" else windows[b]
                    got = client.predict(payload)["logits"]
                    errors[(b, label)] = float(np.max(np.abs(got - expected[b])))
                    calls[(b, label)] = (lambda c, x: lambda: c.predict(x))(client, payload)
                if len(json.dumps(rest.build_body(windows[b]))) <= DEFAULT_MAX_BODY_BYTES:
                    got = rest.predict(windows[b])["logits"]
                    errors[(b, "rest fp32")] = float(np.max(np.abs(got - expected[b])))
                    calls[(b, "rest fp32")] = (lambda c, x: lambda: c.predict(x))(rest, windows[b])
            samples = time_rotation(calls, rounds, warmup, process.pid)
        finally:
            for client in (*clients.values(), rest):
                client.close()
            process.terminate()
            process.wait(timeout=60)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for (b, label), values in samples.items():
        wall, server_cpu, own_cpu, load = (np.asarray(column) for column in zip(*values))
        # the process that ran the model: this one in-process, the server over gRPC
        model_cpu = own_cpu if label == "in-process" else server_cpu
        rows.append({"batch": b, "path": label, "p50_ms": float(np.median(wall) * 1e3),
                     "windows_per_s": float(b / np.median(wall)),
                     "model_cpu_s_per_window": float(np.median(model_cpu) / b),
                     "client_cpu_s_per_window": (float(np.median(own_cpu) / b)
                                                 if label != "in-process" else None),
                     "load": float(np.median(load)), "max_abs_error": errors.get((b, label)),
                     "n": len(values)})
    by_key = {(r["batch"], r["path"]): r for r in rows}
    for row in rows:
        row["speedup_vs_batch1"] = (row["windows_per_s"] / by_key[(1, row["path"])]["windows_per_s"]
                                    if (1, row["path"]) in by_key else None)
        floor = by_key[(row["batch"], "in-process")]["p50_ms"]
        row["overhead_vs_in_process"] = (row["p50_ms"] / floor - 1
                                         if row["path"] != "in-process" else None)
    rows.sort(key=lambda r: (r["batch"], PATHS.index(r["path"])))
    return {"config": name, "window_shape": list(window_shape),
            "payload_mb_fp32": float(np.prod(window_shape) * 4 / 2**20), "export_s": export_s,
            "rounds": rounds, "rows": rows}


def print_table(results: list[dict]) -> None:
    print(f"{os.cpu_count()} CPUs; median of the rounds; load = 1-minute load average")
    print("| config | batch | path | p50 ms / request | windows/s | vs batch 1 | vs in-process "
          "| model-side CPU s / window | client CPU s / window | load | max abs err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    for result in results:
        config = (f"{result['config']} {'x'.join(map(str, result['window_shape'][:4]))} "
                  f"({result['payload_mb_fp32']:.1f} MB fp32)")
        for row in result["rows"]:
            print(f"| {config} | {row['batch']} | {row['path']} | {row['p50_ms']:.0f} | "
                  f"{row['windows_per_s']:.2f} | {fmt(row['speedup_vs_batch1'], '.2f')} | "
                  f"{fmt(row['overhead_vs_in_process'], '+.0%')} | "
                  f"{row['model_cpu_s_per_window']:.3f} | "
                  f"{fmt(row['client_cpu_s_per_window'], '.3f')} | {row['load']:.1f} | "
                  f"{fmt(row['max_abs_error'], '.1e')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["full", "small"],
                        choices=sorted(CONFIGS) + ["preset"])
    parser.add_argument("--preset", help="preset folder / .keras file for the 'preset' config")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, help="timed rounds (default: per config)")
    parser.add_argument("--warmup", type=int, help="untimed calls per (batch, path) first")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if "preset" in args.configs and not args.preset:
        parser.error("--configs preset needs --preset PATH")
    if min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be >= 1. Received: {args.batch_sizes}")
    results = []
    for name in args.configs:
        config = CONFIGS.get(name, dict(variant=None, rounds=3, warmup=1))
        result = run_config(name, config["variant"], args.preset if name == "preset" else None,
                            sorted(set(args.batch_sizes)), args.rounds or config["rounds"],
                            config["warmup"] if args.warmup is None else args.warmup)
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
