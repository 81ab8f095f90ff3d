"""The contract every registered family meets, run for each family's tiny variant in its
default task: a new family is covered by registering it (keras-hub's `run_backbone_test`
and `run_task_test`, timm's `test_models.py`, parametrised over the registry).

Checked: build; symbolic and eager calls agree; JSON config and preset round trips; every
sublayer follows a mixed-precision policy (variables float32); every trainable variable
gets a finite gradient; `fit` two steps with jit_compile True and False; export -> local
gRPC Predict equals the in-process output; an Integrated-Gradients map of the input's shape
(attributable tasks).
"""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbrain.models.registry import (create_backbone, families, get_family, get_task_class,
                                     register_family, unregister_family)

# Families that must be registered; dropping a registration fails `test_registered`.
EXPECTED_FAMILIES = {"swift", "neurostorm", "brainmt", "bixt", "flow_encoder"}
# Layers allowed to compute in float32 under a mixed policy (none yet; e.g. a scan that
# must accumulate in float32 would be listed here by class name).
FLOAT32_LAYERS = set()
BATCH = 2

FAMILIES = sorted(name for name, spec in families().items() if spec.tiny_variant)


def example_inputs(model, batch=BATCH, seed=0):
    """Random inputs with the model's names, shapes and dtypes (one tensor or a dict)."""
    rng = np.random.default_rng(seed)
    values = {}
    for tensor in model.inputs:
        shape = (batch,) + tuple(tensor.shape[1:])
        dtype = np.dtype(str(tensor.dtype))
        values[tensor.name.split(":")[0]] = (rng.standard_normal(shape).astype(dtype)
                                             if np.issubdtype(dtype, np.floating)
                                             else np.zeros(shape, dtype))
    return next(iter(values.values())) if len(values) == 1 else values


def example_targets(task, outputs, seed=1):
    """Targets of the right kind for the task's main output (None: self-supervised)."""
    rng = np.random.default_rng(seed)
    if task.target_kind == "none":
        return None
    output = np.asarray(outputs[task.output_key])
    if task.target_kind == "class" and output.shape[-1] > 1:
        return {task.output_key: rng.integers(0, output.shape[-1], output.shape[:1])}
    if task.target_kind == "class":
        return {task.output_key: rng.integers(0, 2, output.shape).astype("float32")}
    return {task.output_key: rng.standard_normal(output.shape).astype("float32")}


def make_task(name, **backbone_overrides):
    spec = get_family(name)
    keras.utils.set_random_seed(0)
    backbone = create_backbone(name, spec.tiny_variant, **backbone_overrides)
    return get_task_class(spec.default_task)(backbone)


def test_registered():
    assert EXPECTED_FAMILIES <= set(families()), sorted(families())
    for name in EXPECTED_FAMILIES:
        assert get_family(name).tiny_variant, f"{name} registers no tiny variant"


def test_unregistering_is_noticed():
    spec = unregister_family("swift")
    try:
        with pytest.raises(ValueError, match="unknown model"):
            create_backbone("swift_tiny")
        assert "swift" not in families()
    finally:
        register_family(spec)


@pytest.mark.parametrize("name", FAMILIES)
def test_build_symbolic_and_eager(name):
    task = make_task(name)
    backbone = task.backbone
    x = example_inputs(backbone)
    eager = backbone(x)
    symbolic = backbone(keras.tree.map_structure(
        lambda a: keras.KerasTensor((None,) + a.shape[1:], dtype=str(a.dtype)), x))
    assert tuple(symbolic.shape[1:]) == tuple(eager.shape[1:])
    assert eager.shape[0] == BATCH
    pooled = backbone.pool(eager)
    assert tuple(pooled.shape) == (BATCH, eager.shape[-1])
    outputs = task(x)
    assert task.output_key in outputs
    assert np.isfinite(np.asarray(outputs[task.output_key])).all()
    embedding = np.asarray(task.embed(x))
    assert embedding.ndim == 2 and embedding.shape[0] == BATCH and np.isfinite(embedding).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_config_and_preset_round_trip(name, tmp_path):
    import tfbrain

    task = make_task(name)
    backbone = task.backbone
    config = json.loads(json.dumps(backbone.get_config()))
    rebuilt = type(backbone).from_config(config)
    assert rebuilt.count_params() == backbone.count_params()
    x = example_inputs(backbone)
    task.save_to_preset(tmp_path / "task")
    restored = tfbrain.load_preset(tmp_path / "task")
    assert type(restored) is type(task)
    np.testing.assert_allclose(restored(x)[task.output_key], task(x)[task.output_key],
                               rtol=1e-5, atol=1e-6)
    backbone.save_to_preset(tmp_path / "backbone")
    assert type(backbone).from_preset(tmp_path / "backbone").count_params() == backbone.count_params()
    metadata = json.loads((tmp_path / "task" / "metadata.json").read_text())
    assert metadata["task"]["type"] == task.task_type
    assert metadata["task"]["output_key"] == task.output_key


@pytest.mark.parametrize("name", FAMILIES)
def test_mixed_precision_dtypes(name):
    task = make_task(name, dtype="mixed_bfloat16")
    off_policy = [f"{layer.path or layer.name} ({type(layer).__name__}, {layer.dtype_policy.name})"
                  for layer in task.backbone._flatten_layers(include_self=False)
                  if layer.dtype_policy.name != "mixed_bfloat16"
                  and not isinstance(layer, keras.layers.InputLayer)
                  and type(layer).__name__ not in FLOAT32_LAYERS]
    assert off_policy == []
    assert all(v.dtype == "float32" for v in task.backbone.weights)
    out = task.backbone(example_inputs(task.backbone))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert np.isfinite(np.asarray(tf.cast(out, tf.float32))).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_trainable_variable_gets_a_finite_gradient(name):
    task = make_task(name)
    x = example_inputs(task)
    with tf.GradientTape() as tape:
        outputs = task(x, training=True)
        y = example_targets(task, outputs)
        if task.default_loss() is None:
            loss = task.compute_loss(x=x, y=y, y_pred=outputs)
        else:
            loss = tf.reduce_sum(tf.square(tf.cast(outputs[task.output_key], tf.float32)))
    gradients = tape.gradient(loss, task.trainable_variables)
    missing = [v.path for v, g in zip(task.trainable_variables, gradients) if g is None]
    assert missing == []
    bad = [v.path for v, g in zip(task.trainable_variables, gradients)
           if not np.isfinite(np.asarray(tf.convert_to_tensor(g))).all()]
    assert bad == []


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", FAMILIES)
def test_fit_two_steps(name, jit_compile):
    task = make_task(name)
    model = task.training_model()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=task.default_loss(),
                  metrics=task.default_metrics(), jit_compile=jit_compile)
    x = example_inputs(task, batch=BATCH * 2)
    y = example_targets(task, task(x))
    before = [np.array(v) for v in task.trainable_variables]
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert model.optimizer.iterations.numpy() == 2
    changed = sum(not np.allclose(a, np.asarray(v)) for a, v in zip(before, task.trainable_variables))
    assert changed > 0.5 * len(before)


@pytest.mark.parametrize("name", FAMILIES)
def test_export_and_grpc_predict_equal_in_process(name, tmp_path):
    from serving.client import PredictionClient
    from serving.rest_client import RestPredictionClient
    from serving.server import ModelServer
    from tfbrain import export

    task = make_task(name)
    export.export_model(task, tmp_path, name, warmup=True)
    x = example_inputs(task, batch=1)
    expected = {k: np.asarray(v) for k, v in task.serving_outputs(task(x)).items()}
    with ModelServer({name: tmp_path / name}, port=0, rest_port=0) as server:
        with PredictionClient(server.target, name) as client:
            served = client.predict(x)
            embedding = client.embed(x)
        with RestPredictionClient(f"127.0.0.1:{server.rest.port}", name) as rest:
            served_over_rest = rest.predict(x)  # JSON, one or several named inputs
    assert sorted(served_over_rest) == sorted(served)
    for key in served:  # REST and gRPC share one predict path: the same numbers
        np.testing.assert_array_equal(served_over_rest[key], served[key])
    assert sorted(served) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(served[key], expected[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedding, task.embed(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_integrated_gradients_map_has_the_input_shape(name):
    from tfbrain.training.attribution import integrated_gradients

    task = make_task(name)
    if not task.attributable or get_family(name).input_kind != "fmri_window":
        pytest.skip(f"{task.task_type} on {get_family(name).input_kind} is not attributed")
    window = example_inputs(task, batch=1)[0]
    unit = task.default_attribution_unit(np.asarray(task(window[None])[task.output_key])[0])
    attribution = integrated_gradients(task, window, unit, steps=4, batch_size=4)
    assert attribution.shape == window.shape
    assert np.isfinite(attribution).all() and np.abs(attribution).sum() > 0
