"""What importing `tfbrain`, `tfrecords_tools` or `serving` sets up for TensorFlow: the BFC CPU
allocator (each of them can be used without the others)."""

import os
import subprocess
import sys

import pytest

from tests.test_case import REPO_ROOT

# Allocator stats exist only for a BFC allocator: they tell which one TF built.
PROBE = ("import os, {package}, tensorflow as tf\n"
         "tf.zeros((1024,)) + 1\n"
         "try:\n"
         "    tf.config.experimental.get_memory_info('CPU:0')\n"
         "    print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], 'bfc')\n"
         "except ValueError:\n"
         "    print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], 'default')\n")


def run_probe(package, **env):
    base = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    result = subprocess.run([sys.executable, "-c", PROBE.format(package=package)], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300,
                            env={**base, "PYTHONPATH": str(REPO_ROOT), **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


PACKAGES = ["tfbrain", "tfrecords_tools", "serving"]  # each sets the allocator on its own import


@pytest.mark.parametrize("package", PACKAGES)
def test_import_makes_tensorflow_use_the_bfc_cpu_allocator(package):
    assert run_probe(package) == ["true", "bfc"]


@pytest.mark.parametrize("package", PACKAGES)
def test_an_explicit_allocator_choice_wins(package):
    assert run_probe(package, TF_CPU_ALLOCATOR_USE_BFC="false") == ["false", "default"]
