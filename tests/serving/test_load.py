"""Load: 8 concurrent clients x 50 requests of small windows against one server."""

import pathlib
import shutil
import tempfile
import threading
import time
from concurrent import futures

import numpy as np

from serving.client import PredictionClient
from serving.server import ModelServer
from tests.serving.toy_task import make_toy_task
from tests.test_case import TestCase
from tfbrain import export

NUM_CLIENTS = 8
REQUESTS_PER_CLIENT = 50
VOLUME = (4, 4, 4, 3, 1)


class LoadTest(TestCase):
    def test_concurrent_clients(self):
        base = pathlib.Path(tempfile.mkdtemp(prefix="tfbrain_load_"))
        self.addCleanup(shutil.rmtree, base, True)
        model = make_toy_task(num_classes=2)
        export.export_model(model, base, "toy", warmup=False)
        rng = np.random.default_rng(0)
        # Each client cycles through its own windows (batch 1-3, both payload dtypes).
        work = []
        for client_index in range(NUM_CLIENTS):
            batch = 1 + client_index % 3
            x = rng.standard_normal((4, batch) + VOLUME).astype("float32")
            use_fp16 = client_index % 2 == 1
            reference = x.astype("float16").astype("float32") if use_fp16 else x
            expected = [model(w)["logits"].numpy() for w in reference]
            work.append((x, expected, use_fp16))
        errors, answered = [], [0]
        lock = threading.Lock()

        def client_loop(server_target, client_index):
            x, expected, use_fp16 = work[client_index]
            with PredictionClient(server_target, "toy", use_fp16=use_fp16, timeout_s=30, retries=0) as client:
                for i in range(REQUESTS_PER_CLIENT):
                    try:
                        logits = client.predict(x[i % len(x)])["logits"]
                        np.testing.assert_allclose(logits, expected[i % len(x)], atol=1e-5)
                        with lock:
                            answered[0] += 1
                    except Exception as err:  # noqa: BLE001  collect, report all at the end
                        with lock:
                            errors.append(f"client {client_index} request {i}: {err!r}")

        with ModelServer({"toy": base / "toy"}, port=0, max_workers=8) as server:
            start = time.perf_counter()
            with futures.ThreadPoolExecutor(NUM_CLIENTS) as pool:
                jobs = [pool.submit(client_loop, server.target, i) for i in range(NUM_CLIENTS)]
                for job in jobs:
                    job.result(timeout=180)
            elapsed = time.perf_counter() - start
        self.assertEqual(errors, [])
        self.assertEqual(answered[0], NUM_CLIENTS * REQUESTS_PER_CLIENT)
        print(f"\n{answered[0]} requests from {NUM_CLIENTS} clients in {elapsed:.2f} s "
              f"({answered[0] / elapsed:.0f} req/s), 0 errors")
