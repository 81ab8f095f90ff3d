"""Every example config under examples/ loads and validates (family, variant, task)."""

import pytest

from tests.test_case import REPO_ROOT
from tfbrain.models.registry import resolve_variant
from tfbrain.training.config import load_config

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.toml"))


def test_there_are_examples_for_each_task():
    tasks = {load_config(path).task.type for path in EXAMPLES}
    assert {"classification", "regression", "contrastive", "mae"} <= tasks


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    config = load_config(path)
    assert config.optim.jit_compile is not None
    if not config.model.preset:
        family, variant = config.model_family_and_variant()
        assert resolve_variant(variant)[0].name == family
