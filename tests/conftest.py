"""Shared pytest set-up: the `large` marker and the parity-fixture locator.

`--run_large` turns on full-size, XLA-heavy, SavedModel and slow tests.
Parity fixtures live in `../shared/fixtures` (override with TFBRAIN_SHARED). A fresh
clone has none: parity tests then skip with a reason, unless TFBRAIN_REQUIRE_FIXTURES=1
(set by .ci/run), which turns the skip into a failure.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest


def pytest_addoption(parser):
    parser.addoption("--run_large", action="store_true", default=False,
                     help="run tests marked `large` (full-size configs, XLA, SavedModel)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_large"):
        return
    skip_large = pytest.mark.skip(reason="large test: pass --run_large to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip_large)
