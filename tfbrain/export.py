"""Export a task model (or a bare backbone) as a SavedModel that TF-Serving can load.

Layout written (the one `tensorflow_model_server` watches):

    MODEL_BASE/
      models.config                 ModelServerConfig text proto, one entry per exported name
      batching_parameters.txt       BatchingParameters text proto (written once, then left alone)
      NAME/
        VERSION/                    integer folder, written to a hidden temp folder then renamed
          saved_model.pb  variables/  fingerprint.pb
          assets.extra/
            tf_serving_warmup_requests   one PredictionLog per signature (TFRecord)
            tfbrain_export.json          signatures, task, source and versions

Signatures (names in `serving.signatures`; inputs are the model's own, named as in the
model, e.g. one "fmri" (-1, D, H, W, T, C) for the fMRI families, dynamic batch):

    serving_default        float32 in; the Task's `serving_outputs` (e.g. {"logits",
                           "probabilities"} or {"prediction"})
    serving_default_fp16   float16 in (half the gRPC payload), cast to float32 inside
    embed                  float32 in; {"embedding": the backbone's pooled output, (B, C')}
    embed_fp16             float16 in

TF-Serving signatures have one fixed dtype per input, so the float16 payload gets its own
signature with the `_fp16` suffix rather than a dtype-polymorphic input. A bare backbone
(no Task) serves its pooled embedding as `serving_default`. Export asks the Task and the
backbone; it names no family and no task type.

Every function is traced with `jit_compile=False`: TF-Serving refuses functions marked
`_XlaMustCompile` unless started with an experimental flag, so `export_model` checks the
written graph and refuses to publish one that carries the mark, or a Python-only op.
Letters: B batch, D/H/W space, T frames, C channels.
"""

import datetime
import json
import pathlib
import re

import keras
import numpy as np
import tensorflow as tf

from serving.signatures import (BATCHING_FILE, DEFAULT_SIGNATURE, EMBED_SIGNATURE,
                                EMBEDDING_OUTPUT, EXPORT_METADATA_FILE, FMRI_INPUT, FP16_SUFFIX,
                                MODELS_CONFIG_FILE, WARMUP_FILE)
from tfbrain.atomic import atomic_folder, atomic_write_text
from tfbrain.version import __version__

INPUT_NAME = FMRI_INPUT  # the single input of the fMRI families
# Op types that call back into Python: a model server has no interpreter to run them.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

# Defaults for TF-Serving's batching: full windows are 67.5 MB each in float32, so keep
# batches small and the wait short; tune per GPU (see docs/serving.md).
DEFAULT_BATCHING = {"max_batch_size": 4, "batch_timeout_micros": 5000,
                    "max_enqueued_batches": 32, "num_batch_threads": 2}


class ExportError(RuntimeError):
    """The model cannot be exported in a form TF-Serving will load."""


# ------------------------------------------------------------------------------------
# Loading what to export
# ------------------------------------------------------------------------------------

def load_model_for_export(source) -> tuple[keras.Model, dict]:
    """Load a preset folder or name (a training checkpoint is one) or a `.keras` file.

    Returns the model and the preset's metadata ({} for a `.keras` file).
    """
    path = pathlib.Path(str(source)).expanduser()
    if path.suffix == ".keras" and path.is_file():
        import tfbrain.models  # noqa: F401  registers the classes a .keras file names
        return keras.saving.load_model(str(path), compile=False), {}
    from tfbrain.models.loading import load_preset
    from tfbrain.presets import load_preset_metadata
    return load_preset(source), load_preset_metadata(source)


# ------------------------------------------------------------------------------------
# Versions
# ------------------------------------------------------------------------------------

def list_versions(model_dir) -> list[int]:
    """Integer version folders under `model_dir`, ascending (what TF-Serving would see)."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir) -> int:
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


# ------------------------------------------------------------------------------------
# Serving functions
# ------------------------------------------------------------------------------------

def input_specs(model: keras.Model) -> dict[str, tuple[tuple[int, ...], tf.DType]]:
    """{input name: (shape without batch, dtype)} of the model; every dimension known."""
    specs = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ExportError("Every non-batch input dimension must be known to export a serving "
                              f"signature. Received: input {name!r} shape {tuple(tensor.shape)}")
        specs[name] = (tuple(int(d) for d in shape), tf.as_dtype(tensor.dtype))
    return specs


def input_spec(model: keras.Model) -> tuple[int, ...]:
    """(D, H, W, T, C) of a model with the single "fmri" input."""
    specs = input_specs(model)
    if list(specs) != [INPUT_NAME]:
        raise ExportError(f"Expected a model with one input named {INPUT_NAME!r}. "
                          f"Received: inputs {list(specs)}")
    return specs[INPUT_NAME][0]


def _is_task(model) -> bool:
    return callable(getattr(model, "serving_outputs", None)) and hasattr(model, "backbone")


def _structure(model, tensors: dict):
    """The model's inputs as it takes them: one tensor, or the dict of named inputs."""
    return next(iter(tensors.values())) if len(tensors) == 1 else tensors


def _positional(body, names, upcast):
    """`body({name: tensor})` as a function of positional tensors (one per input), with
    float16 inputs upcast first when `upcast` is given."""

    def traced(*args):
        return body({n: (upcast(a) if upcast is not None and a.dtype == tf.float16 else a)
                     for n, a in zip(names, args)})

    return traced


def build_serving_functions(model: keras.Model) -> dict[str, tf.types.experimental.GenericFunction]:
    """One traced, non-jit `tf.function` per signature name."""
    specs = input_specs(model)
    names = list(specs)
    is_task = _is_task(model)
    backbone = model.backbone if is_task else model

    def head(inputs):
        if is_task:
            outputs = model.serving_outputs(model(_structure(model, inputs), training=False))
            return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
        return embed(inputs)

    def embed(inputs):
        if is_task and hasattr(model, "embed"):  # the Task's (backbone pooling or its override)
            return {EMBEDDING_OUTPUT: tf.cast(model.embed(_structure(model, inputs)), tf.float32)}
        features = backbone(_structure(backbone, inputs), training=False)
        pooled = backbone.pool(features) if hasattr(backbone, "pool") else tf.reduce_mean(
            features, axis=list(range(1, len(features.shape) - 1)))
        return {EMBEDDING_OUTPUT: tf.cast(pooled, tf.float32)}

    # The float16 -> float32 cast sits in its own function that graph optimisation may not
    # inline: inlined, Grappler moves the cast past the value-preserving reshapes and
    # transposes of the patch embedding, which then run on float16 and made a full SwiFT
    # window 25-30% slower on CPU (measured; the cast itself costs about 50 ms).
    upcast = tf.function(lambda x: tf.cast(x, tf.float32), jit_compile=False, autograph=False,
                         experimental_attributes={"_noinline": True})

    bodies = {DEFAULT_SIGNATURE: head, EMBED_SIGNATURE: embed}
    has_float = any(dtype.is_floating for _, dtype in specs.values())
    functions = {}
    for name, body in bodies.items():
        for suffix, half in (("", False), (FP16_SUFFIX, True)):
            if half and not has_float:
                continue
            signature = [tf.TensorSpec((None,) + shape,
                                       tf.float16 if half and dtype.is_floating else dtype,
                                       name=input_name)
                         for input_name, (shape, dtype) in specs.items()]

            # jit_compile=False, not None: Keras/TF "auto" turns XLA on for GPU exports.
            fn = tf.function(_positional(body, names, upcast if half else None),
                             input_signature=signature, jit_compile=False, autograph=False)
            fn.get_concrete_function()  # trace now so ExportArchive takes it as is
            functions[name + suffix] = fn
    return functions


# ------------------------------------------------------------------------------------
# Graph checks
# ------------------------------------------------------------------------------------

def _read_saved_model_proto(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(saved_model_dir) / "saved_model.pb").read_bytes())
    return proto


def find_must_compile_functions(saved_model_dir) -> list[str]:
    """Names of functions (or call nodes) in the SavedModel marked `_XlaMustCompile=true`."""
    found = []
    for meta_graph in _read_saved_model_proto(saved_model_dir).meta_graphs:
        library = meta_graph.graph_def.library
        for function in library.function:
            if function.attr["_XlaMustCompile"].b:
                found.append(function.signature.name)
            for node in function.node_def:
                if node.attr["_XlaMustCompile"].b:
                    found.append(f"{function.signature.name}/{node.name}")
        for node in meta_graph.graph_def.node:
            if node.attr["_XlaMustCompile"].b:
                found.append(node.name)
    return found


def find_python_ops(saved_model_dir) -> list[str]:
    """Nodes whose op calls back into Python (py_function, numpy_function)."""
    found = []
    for meta_graph in _read_saved_model_proto(saved_model_dir).meta_graphs:
        for function in meta_graph.graph_def.library.function:
            found += [f"{function.signature.name}/{n.name} ({n.op})"
                      for n in function.node_def if n.op in PYTHON_OPS]
        found += [f"{n.name} ({n.op})" for n in meta_graph.graph_def.node if n.op in PYTHON_OPS]
    return found


def check_servable(saved_model_dir) -> None:
    """Raise ExportError if TF-Serving would refuse or fail to run this SavedModel."""
    must_compile = find_must_compile_functions(saved_model_dir)
    if must_compile:
        raise ExportError(
            "The serving graph has functions marked _XlaMustCompile, which TF-Serving rejects "
            "without its experimental XLA flag: " + ", ".join(must_compile[:10]) +
            ". Build the model with jit_compile=False (or its non-XLA code path) before export.")
    python_ops = find_python_ops(saved_model_dir)
    if python_ops:
        raise ExportError("The serving graph calls Python, which a model server cannot run: "
                          + ", ".join(python_ops[:10]))


# ------------------------------------------------------------------------------------
# TF-Serving side files
# ------------------------------------------------------------------------------------

def _warmup_input(shape, dtype) -> np.ndarray:
    # A real-looking input (standard-normal, fixed seed; zeros for integer inputs), batch of one.
    if not np.issubdtype(dtype, np.floating):
        return np.zeros((1,) + tuple(shape), dtype)
    rng = np.random.default_rng(0)
    return rng.standard_normal((1,) + tuple(shape), dtype=np.float32).astype(dtype)


def write_warmup_requests(path, model_name: str, signatures: dict) -> int:
    """Write one PredictionLog per signature to the TFRecord `path`; returns the count."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, fn in signatures.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
            for spec in fn.input_signature:
                value = _warmup_input(spec.shape[1:], spec.dtype.as_numpy_dtype)
                request.inputs[spec.name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(signatures)


def update_models_config(model_base, model_name: str, container_base: str = "/models",
                         num_versions: int = 1) -> pathlib.Path:
    """Add or replace `model_name` in MODEL_BASE/models.config (ModelServerConfig text).

    `base_path` is where the server sees the model: `container_base/model_name`, which
    matches the bind mounts in serving/deploy/.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    path = pathlib.Path(model_base) / MODELS_CONFIG_FILE
    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        text_format.Parse(path.read_text(), config)
    entries = config.model_config_list.config
    kept = [c for c in entries if c.name != model_name]
    del entries[:]
    entries.extend(kept)
    entry = entries.add()
    entry.name = model_name
    entry.base_path = f"{container_base.rstrip('/')}/{model_name}"
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = num_versions
    atomic_write_text(path, text_format.MessageToString(config))
    return path


def batching_parameters_text(max_batch_size: int = 4, batch_timeout_micros: int = 5000,
                             max_enqueued_batches: int = 32, num_batch_threads: int = 2) -> str:
    """BatchingParameters text proto for `--batching_parameters_file`."""
    return (f"max_batch_size {{ value: {max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
            f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
            f"num_batch_threads {{ value: {num_batch_threads} }}\n"
            "pad_variable_length_inputs: false\n")


# ------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------

def _signature_summary(functions: dict) -> dict:
    summary = {}
    for name, fn in functions.items():
        concrete = fn.get_concrete_function()
        summary[name] = {
            "inputs": {spec.name: {"dtype": spec.dtype.name, "shape": [-1] + list(spec.shape[1:])}
                       for spec in fn.input_signature},
            "outputs": {k: {"dtype": v.dtype.name, "shape": [-1] + list(v.shape[1:])}
                        for k, v in concrete.structured_outputs.items()},
        }
    return summary


def export_model(model: keras.Model, model_base, model_name: str, version: int | None = None, *,
                 metadata: dict | None = None, source: str | None = None, warmup: bool = True,
                 write_server_config: bool = True, container_base: str = "/models",
                 overwrite: bool = False, progress: bool = False) -> pathlib.Path:
    """Export `model` to MODEL_BASE/MODEL_NAME/VERSION and return that folder.

    Args:
        model: a Task (dict outputs, `.backbone`, `serving_outputs`) or a bare backbone;
            its inputs, named, become the signatures' inputs.
        model_base: the folder TF-Serving's model config points into.
        model_name: the name clients put in `ModelSpec.name`.
        version: integer version; the next free one by default.
        metadata: the preset's metadata.json (for the task type and provenance).
        source: where the model came from, recorded in assets.extra.
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        write_server_config: add the model to MODEL_BASE/models.config and write
            MODEL_BASE/batching_parameters.txt if it is missing.
        container_base: the model base path as the server sees it (in models.config).
        overwrite: replace an existing version folder instead of refusing.
        progress: a bar over the export's stages on stderr (when it is a terminal); tracing
            and writing the signatures is the long one.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name or ""):
        raise ValueError("`model_name` must be letters, digits, '.', '_' or '-'. "
                         f"Received: model_name={model_name!r}")
    model_dir = pathlib.Path(model_base) / model_name
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (or --overwrite) or another version")
    if hasattr(model, "for_serving"):
        model = model.for_serving()  # e.g. the selective scan's non-XLA loop
    from tfbrain.training.progress import progress_bar

    stages = progress_bar(3 + int(warmup), "export", "stage", enabled=progress)
    functions = build_serving_functions(model)
    if _is_task(model):
        task = model.task_metadata()
    else:
        task = {"type": None, "output_key": EMBEDDING_OUTPUT}

    # written under a hidden, non-integer name (a watching server ignores it), then renamed
    with atomic_folder(target, replace=overwrite) as staged:
        archive = keras.export.ExportArchive()
        archive.track(model)
        stages.set_postfix_str(f"tracing {len(functions)} signatures")
        for name, fn in functions.items():
            archive.add_endpoint(name=name, fn=fn)
        stages.update(1)
        stages.set_postfix_str("writing the SavedModel")
        archive.write_out(str(staged), verbose=False)
        stages.update(1)
        stages.set_postfix_str("checking it is servable")
        check_servable(staged)
        stages.update(1)
        extra = staged / "assets.extra"
        extra.mkdir(exist_ok=True)
        if warmup:
            stages.set_postfix_str("warm-up requests")
            write_warmup_requests(extra / WARMUP_FILE, model_name, functions)
            stages.update(1)
        info = {
            "model_name": model_name,
            "version": version,
            "task": task,
            "signatures": _signature_summary(functions),
            "fp16_suffix": FP16_SUFFIX,
            "source": source,
            "class_name": keras.saving.get_registered_name(type(model)),
            "tfbrain_version": __version__,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "date_exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "preset_metadata": metadata or {},
            "preprocessing": _training_preprocessing(metadata or {}),
        }
        (extra / EXPORT_METADATA_FILE).write_text(json.dumps(info, indent=2, default=str))
    if write_server_config:
        update_models_config(model_base, model_name, container_base=container_base)
        batching = pathlib.Path(model_base) / BATCHING_FILE
        if not batching.exists():
            atomic_write_text(batching, batching_parameters_text(**DEFAULT_BATCHING))
    stages.close()
    return target


def _training_preprocessing(metadata: dict) -> dict | None:
    """The preprocessing settings of the dataset the model was trained on (dataset.json), so
    that a NIfTI sent for prediction is prepared the same way; None when unknown."""
    dataset_dir = metadata.get("train_config", {}).get("data", {}).get("dataset_dir")
    path = pathlib.Path(dataset_dir) / "dataset.json" if dataset_dir else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("preprocessing")


def export_preset(source, model_base, model_name: str, version: int | None = None,
                  **kwargs) -> pathlib.Path:
    """Load a preset folder/name, training checkpoint folder or `.keras` file and export it."""
    model, metadata = load_model_for_export(source)
    return export_model(model, model_base, model_name, version, metadata=metadata,
                        source=str(source), **kwargs)
