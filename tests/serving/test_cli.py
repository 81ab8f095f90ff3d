"""`tfbrain serve` / `python -m serving` start-up checks."""

import pytest

from serving.cli import auto_jit_warning


@pytest.mark.parametrize("flags", ["--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit", "--tf_xla_auto_jit=1",
                                   "--tf_xla_cpu_global_jit", "--xla_dump_to=/tmp --tf_xla_auto_jit=2"])
def test_auto_clustering_is_warned_about(flags):
    assert "auto-clustering" in auto_jit_warning(flags)


@pytest.mark.parametrize("flags", ["", "--tf_xla_auto_jit=0", "--tf_xla_auto_jit=-1", "--xla_dump_to=/tmp"])
def test_no_warning_without_auto_clustering(flags):
    assert auto_jit_warning(flags) is None
