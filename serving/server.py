"""A local stand-in for `tensorflow_model_server`: PredictionService and ModelService over gRPC.

It speaks the protos of tensorflow-serving-api, so the stock `PredictionServiceStub` (and
`serving.client`) work against it and against the real server alike. It serves SavedModels
laid out as MODEL_BASE/NAME/VERSION/ (what `tfbrain export` writes) and depends only on
their SignatureDefs, never on a model class.

Versions: a request without a version gets the newest version folder on disk (re-read on
each request, so a freshly exported version is picked up); a request with a version gets
that folder, loaded on first use and kept. `pinned_versions` fixes the default per model;
`version_labels` ({model: {label: version}}, TF-Serving's models.config `version_labels`)
lets a request ask for a version by label.

Status codes: unknown model, version or signature -> NOT_FOUND (the real server says
FAILED_PRECONDITION for an unknown signature key); an unknown version label, bad dtype,
rank, shape, missing or unknown input, unknown output_filter name -> INVALID_ARGUMENT (as
TF-Serving); a failure inside the model -> INTERNAL. None of them stops the server.

REST: with `rest_port`, `serving.rest` serves TF-Serving's REST API over the same
repository, through the same `predict` path (`run_signature`) and the same validation.

Classify, Regress and MultiInference (tf.Example APIs) are not implemented: UNIMPLEMENTED.

Limits: a request whose batch dimension exceeds `max_batch` (default: `max_batch_size` of
MODEL_BASE/batching_parameters.txt, which `tfbrain export` writes, else 64) is refused with
INVALID_ARGUMENT from its shape alone, before anything is allocated. The port is bound
without SO_REUSEPORT, so a second server on a port in use fails to start. A version folder
counts only when complete (saved_model.pb and variables/variables.index); an incomplete
one (still being copied) is skipped with a warning, as TF-Serving serves a version only
once it has loaded.
"""

import dataclasses
import logging
import os
import pathlib
import re
import signal
import threading
from concurrent import futures

import grpc
import numpy as np
from google.protobuf import any_pb2, wrappers_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.apis import status_pb2 as util_status_pb2

from serving.signatures import DEFAULT_SIGNATURE
from serving.tensors import ndarray_to_tensor_proto
from serving.validation import RequestError, SignatureSpec, validate_inputs, validate_output_filter

logger = logging.getLogger("serving.server")

MAX_MESSAGE_BYTES = 2**31 - 1  # what tensorflow_model_server allows (INT32_MAX)


DEFAULT_MAX_BATCH = 64
_warned_incomplete: set = set()


def _is_complete(version_dir: pathlib.Path) -> bool:
    """A SavedModel folder that has finished copying: the graph and its variables index."""
    return (version_dir / "saved_model.pb").is_file() and (version_dir / "variables" / "variables.index").is_file()


def _version_dirs(model_dir: pathlib.Path) -> dict[int, pathlib.Path]:
    if not model_dir.is_dir():
        return {}
    versions = {}
    for p in model_dir.iterdir():
        if not p.name.isdigit():
            continue
        if _is_complete(p):
            versions[int(p.name)] = p
        elif p not in _warned_incomplete:
            _warned_incomplete.add(p)
            logger.warning("skipping incomplete version folder %s (no saved_model.pb or "
                           "variables/variables.index yet: still being copied?)", p)
    return versions


def default_max_batch(model_dir: pathlib.Path) -> int:
    """`max_batch_size` of the batching parameters `tfbrain export` writes beside the model
    folders (MODEL_BASE/batching_parameters.txt), else DEFAULT_MAX_BATCH."""
    path = pathlib.Path(model_dir).parent / "batching_parameters.txt"
    try:
        match = re.search(r"max_batch_size\s*\{\s*value:\s*(\d+)", path.read_text())
    except OSError:
        return DEFAULT_MAX_BATCH
    return int(match.group(1)) if match and int(match.group(1)) > 0 else DEFAULT_MAX_BATCH


@dataclasses.dataclass
class LoadedVersion:
    """One SavedModel version in memory: its callable signatures and their specs."""
    name: str
    version: int
    path: pathlib.Path
    specs: dict[str, SignatureSpec]
    signature_defs: dict  # name -> SignatureDef proto, for GetModelMetadata
    functions: dict

    @classmethod
    def load(cls, name: str, version: int, path: pathlib.Path) -> "LoadedVersion":
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        signature_defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
                          if not k.startswith("__")}  # "__saved_model_init_op" is not a signature
        loaded = tf.saved_model.load(str(path))
        functions = {k: loaded.signatures[k] for k in signature_defs if k in loaded.signatures}
        specs = {k: SignatureSpec.from_signature_def(k, signature_defs[k]) for k in functions}
        version_obj = cls(name, version, path, specs, signature_defs, functions)
        version_obj._keepalive = loaded  # the functions' variables live on this object
        return version_obj

    def run(self, signature_name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf
        # convert_to_tensor: one copy out of the request's buffer (tf.constant measured slower)
        outputs = self.functions[signature_name](**{k: tf.convert_to_tensor(v) for k, v in arrays.items()})
        return {k: v.numpy() for k, v in outputs.items()}


class ModelRepository:
    """Models by name (each a folder of integer version folders), loaded lazily, thread-safe."""

    def __init__(self, model_dirs: dict[str, os.PathLike], pinned_versions: dict[str, int] | None = None,
                 max_batch: int | None = None, version_labels: dict[str, dict[str, int]] | None = None):
        self.model_dirs = {name: pathlib.Path(d) for name, d in model_dirs.items()}
        self.pinned_versions = dict(pinned_versions or {})
        # TF-Serving's `version_labels` of models.config: {model: {label: version}}
        self.version_labels = {name: dict(labels) for name, labels in (version_labels or {}).items()}
        for name in self.version_labels:
            if name not in self.model_dirs:
                raise ValueError(f"version label for model {name!r}, which is not served; "
                                 f"served models: {sorted(self.model_dirs)}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1. Received: {max_batch}")
        self.max_batch = {name: max_batch or default_max_batch(d) for name, d in self.model_dirs.items()}
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        for name, model_dir in self.model_dirs.items():
            if not _version_dirs(model_dir):
                    raise FileNotFoundError(f"Model {name!r}: no complete version folder (saved_model.pb and "
                                        f"variables/) under {model_dir} (expected {model_dir}/<integer>/)")

    def versions(self, name: str) -> list[int]:
        return sorted(_version_dirs(self.model_dirs[name]))

    def loaded_versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(v for (n, v) in self._loaded if n == name)

    def get(self, model_spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The version a ModelSpec asks for; RequestError(NOT_FOUND) if there is none."""
        name = model_spec.name
        if not name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is empty")
        if name not in self.model_dirs:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: model {name!r} is not served; "
                               f"served models: {sorted(self.model_dirs)}")
        on_disk = _version_dirs(self.model_dirs[name])
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            # TF-Serving answers an unknown label with INVALID_ARGUMENT and this message's start
            labels = self.version_labels.get(name, {})
            if model_spec.version_label not in labels:
                known = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none (--version-label)"
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {model_spec.version_label!r} "
                                   f"of model {name!r}; its labels: {known}")
            version = labels[model_spec.version_label]
        elif choice == "version":
            version = int(model_spec.version.value)
        else:
            version = self.pinned_versions.get(name, max(on_disk) if on_disk else -1)
        if version not in on_disk:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: model {name!r} version {version} does "
                               f"not exist; versions on disk: {sorted(on_disk)}")
        return self._load(name, version, on_disk[version])

    def _load(self, name: str, version: int, path: pathlib.Path) -> LoadedVersion:
        key = (name, version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one thread loads a version; the others wait for it
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            logger.info("loading model %r version %d from %s", name, version, path)
            loaded = LoadedVersion.load(name, version, path)
            with self._lock:
                self._loaded[key] = loaded
            return loaded

    def preload(self) -> None:
        """Load each model's default version now rather than on the first request."""
        for name in self.model_dirs:
            self.get(model_pb2.ModelSpec(name=name))


def _response_spec(loaded: LoadedVersion, signature_name: str) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(name=loaded.name, signature_name=signature_name,
                               version=wrappers_pb2.Int64Value(value=loaded.version))


class SignatureNotFound(RequestError):
    """The model has no signature of that name (gRPC: NOT_FOUND; REST answers 400 as TF-Serving)."""


def signature_spec(loaded: LoadedVersion, signature_name: str) -> SignatureSpec:
    """The spec of one of `loaded`'s signatures ("" means serving_default)."""
    signature_name = signature_name or DEFAULT_SIGNATURE
    spec = loaded.specs.get(signature_name)
    if spec is None:
        raise SignatureNotFound(grpc.StatusCode.NOT_FOUND,
                                f"Serving signature name: {signature_name!r} not found in model "
                                f"{loaded.name!r} version {loaded.version}; signatures: {sorted(loaded.specs)}")
    return spec


def run_signature(repository: ModelRepository, loaded: LoadedVersion, spec: SignatureSpec,
                  inputs, output_filter=()) -> dict[str, np.ndarray]:
    """Validate TensorProto inputs against `spec` and run it: the one predict path behind
    gRPC Predict and REST :predict. Returns the wanted outputs by name."""
    arrays = validate_inputs(spec, inputs, repository.max_batch.get(loaded.name))
    wanted = validate_output_filter(spec, output_filter)
    outputs = loaded.run(spec.name, arrays)
    return {key: outputs[key] for key in wanted}


def predict(repository: ModelRepository, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    loaded = repository.get(request.model_spec)
    spec = signature_spec(loaded, request.model_spec.signature_name)
    outputs = run_signature(repository, loaded, spec, request.inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=_response_spec(loaded, spec.name))
    for key, value in outputs.items():
        ndarray_to_tensor_proto(value, out=response.outputs[key])
    return response


def model_metadata(repository: ModelRepository, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    loaded = repository.get(request.model_spec)
    fields = list(request.metadata_field)
    if not fields:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "GetModelMetadataRequest must name at least one metadata_field "
                           "(supported: 'signature_def')")
    unsupported = [f for f in fields if f != "signature_def"]
    if unsupported:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"metadata_field {unsupported} not supported; supported: 'signature_def'")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in loaded.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    packed = any_pb2.Any()
    packed.Pack(signature_map)
    response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_response_spec(loaded, ""))
    response.metadata["signature_def"].CopyFrom(packed)
    return response


def model_status(repository: ModelRepository, request: get_model_status_pb2.GetModelStatusRequest
                 ) -> get_model_status_pb2.GetModelStatusResponse:
    """AVAILABLE for each loaded version (a named or labelled version is loaded on demand)."""
    loaded = repository.get(request.model_spec)  # NOT_FOUND for unknown name/version
    versions = ([loaded.version] if request.model_spec.WhichOneof("version_choice")
                else repository.loaded_versions(loaded.name))
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in versions:
        response.model_version_status.add(
            version=version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            status=util_status_pb2.StatusProto(error_code=0, error_message=""))
    return response


def handle_request(fn):
    """Run fn(); turn RequestError into (None, (code, message)), anything else into INTERNAL.
    Shared by the gRPC servicers and the REST handler."""
    try:
        return fn(), None
    except RequestError as err:
        logger.info("refused request: %s %s", err.code.name, err.message)
        return None, (err.code, err.message)
    except Exception as err:  # noqa: BLE001  the server must outlive any bad request
        logger.exception("request failed")
        return None, (grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata for the models of a ModelRepository."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        response, error = handle_request(lambda: predict(self.repository, request))
        if error:
            context.abort(*error)
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        response, error = handle_request(lambda: model_metadata(self.repository, request))
        if error:
            context.abort(*error)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus for the models of a ModelRepository."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        response, error = handle_request(lambda: model_status(self.repository, request))
        if error:
            context.abort(*error)
        return response


class ModelServer:
    """The gRPC server: PredictionService + ModelService on host:port, and with `rest_port`
    TF-Serving's REST API (`serving.rest`) on rest_host:rest_port over the same models.

    `port=0` / `rest_port=0` pick free ports (read `.port` / `.rest.port` after `start()`).
    Use as a context manager in tests; `serve()` runs one until SIGTERM/SIGINT.
    """

    def __init__(self, model_dirs: dict[str, os.PathLike], host: str = "127.0.0.1", port: int = 8500,
                 max_workers: int = 8, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 pinned_versions: dict[str, int] | None = None, preload: bool = True,
                 max_batch: int | None = None, version_labels: dict[str, dict[str, int]] | None = None,
                 rest_port: int | None = None, rest_host: str | None = None,
                 rest_max_body_bytes: int | None = None):
        self.repository = ModelRepository(model_dirs, pinned_versions, max_batch, version_labels)
        self.host = host
        self.requested_port = port
        self.port = None
        self.preload = preload
        self.rest = None
        if rest_port is not None:
            from serving.rest import DEFAULT_MAX_BODY_BYTES, RestServer  # rest imports this module
            self.rest = RestServer(self.repository, host=rest_host or host, port=rest_port,
                                   max_body_bytes=rest_max_body_bytes or DEFAULT_MAX_BODY_BYTES,
                                   max_workers=max_workers)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="serving"),
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0)])  # a port in use is an error, not a shared port
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.repository), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.repository), self._server)

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> int:
        if self.preload:
            self.repository.preload()
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            self.port = self._server.add_insecure_port(f"{host}:{self.requested_port}")
        except RuntimeError:  # grpc raises on a failed bind in recent versions
            self.port = 0
        if not self.port:
            raise OSError(f"could not bind {host}:{self.requested_port}: the port is in use "
                          "(another server?) or not available; choose another --port")
        self._server.start()
        logger.info("serving %s on %s", sorted(self.repository.model_dirs), self.target)
        if self.rest is not None:
            try:
                self.rest.start()
            except OSError:
                self._server.stop(None)
                raise
        return self.port

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Refuse new requests, let running ones finish for up to `grace_s`, then close."""
        if self.rest is not None:
            self.rest.stop(grace_s)
        self._server.stop(grace_s).wait()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout_s)

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace_s=1.0)


def serve(model_dirs: dict[str, os.PathLike], host: str = "127.0.0.1", port: int = 8500,
          max_workers: int = 8, max_message_bytes: int = MAX_MESSAGE_BYTES,
          pinned_versions: dict[str, int] | None = None, grace_s: float = 10.0,
          ready_file: os.PathLike | None = None, max_batch: int | None = None,
          version_labels: dict[str, dict[str, int]] | None = None, rest_port: int | None = None,
          rest_host: str | None = None, rest_max_body_bytes: int | None = None) -> int:
    """Run a ModelServer until SIGTERM or SIGINT, then shut down gracefully. Returns 0.

    `ready_file`, when given, receives the bound gRPC port once the server accepts requests
    (and, with REST on, the REST port on a second line).
    """
    server = ModelServer(model_dirs, host=host, port=port, max_workers=max_workers,
                         max_message_bytes=max_message_bytes, pinned_versions=pinned_versions,
                         max_batch=max_batch, version_labels=version_labels, rest_port=rest_port,
                         rest_host=rest_host, rest_max_body_bytes=rest_max_body_bytes)
    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        logger.info("received %s, shutting down (grace %.0f s)", signal.Signals(signum).name, grace_s)
        stop_requested.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = server.start()
        print(f"serving {', '.join(sorted(model_dirs))} on {server.target}", flush=True)
        if server.rest is not None:
            print(f"REST API on {server.rest.url}/v1/models/NAME", flush=True)
        if ready_file:
            ports = [str(port)] + ([str(server.rest.port)] if server.rest is not None else [])
            pathlib.Path(ready_file).write_text("\n".join(ports))
        while not stop_requested.wait(0.5):
            pass
        server.stop(grace_s)
        print("server stopped", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
