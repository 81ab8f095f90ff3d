"""What importing the `tfbrain` package sets up for TensorFlow."""

import os
import subprocess
import sys

from tests.test_case import REPO_ROOT

# Allocator stats exist only for a BFC allocator: they tell which one TF built.
PROBE = ("import os, tfbrain, tensorflow as tf\n"
         "tf.zeros((1024,)) + 1\n"
         "try:\n"
         "    tf.config.experimental.get_memory_info('CPU:0')\n"
         "    print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], 'bfc')\n"
         "except ValueError:\n"
         "    print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'], 'default')\n")


def run_probe(**env):
    base = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300,
                            env={**base, "PYTHONPATH": str(REPO_ROOT), **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_import_makes_tensorflow_use_the_bfc_cpu_allocator():
    assert run_probe() == ["true", "bfc"]


def test_an_explicit_allocator_choice_wins():
    assert run_probe(TF_CPU_ALLOCATOR_USE_BFC="false") == ["false", "default"]
