"""gRPC client for any TF-Serving-compatible endpoint (the real server or `serving.server`).

    with PredictionClient("127.0.0.1:8500", "swift_hcp_sex", use_fp16=True) as client:
        outputs = client.predict(windows)          # {"logits": ..., "probabilities": ...}
        embedding = client.embed(windows)          # (B, C')

It uses the stock `PredictionServiceStub`. With `use_fp16=True` windows travel as float16
(half the payload) to the signature of the same name with the `_fp16` suffix, which
`tfbrain export` writes. Calls have a deadline and are retried with exponential backoff on
UNAVAILABLE and DEADLINE_EXCEEDED (Predict is idempotent).

Letters: B batch, D/H/W space, T frames, C channels.
"""

import time
from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from serving.tensors import ndarray_to_tensor_proto, tensor_proto_to_ndarray
from serving.validation import SignatureSpec, check_client_options

from serving.signatures import DEFAULT_SIGNATURE, EMBED_SIGNATURE, FMRI_INPUT, FP16_SUFFIX

INPUT_NAME = FMRI_INPUT  # the single input of the fMRI families
MAX_MESSAGE_BYTES = 2**31 - 1
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class PredictionClient:
    """Predict / metadata / status calls against one model at `target` ("host:port").

    Args:
        target: "host:port" of the gRPC endpoint.
        model_name: `ModelSpec.name`.
        version: a fixed version number; the server's default (newest) when None.
        version_label: a version label instead of a number (`ModelSpec.version_label`).
        use_fp16: send float16 windows to the `<signature>_fp16` signatures.
        timeout_s: deadline of each attempt.
        retries: extra attempts after a retryable failure.
        backoff_s: wait before the first retry; doubled each time.
        max_message_bytes: the channel's receive (and send) limit; gRPC's 4 MB default is
            too small for full-window responses or batches.
        channel: an existing channel to use instead of opening one (not closed by `close`).
    """

    def __init__(self, target: str, model_name: str, *, version: int | None = None,
                 version_label: str | None = None, use_fp16: bool = False, timeout_s: float = 60.0, retries: int = 2,
                 backoff_s: float = 0.2, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 channel: grpc.Channel | None = None):
        check_client_options(version=version, version_label=version_label, timeout_s=timeout_s, retries=retries)
        self.target = target
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.use_fp16 = use_fp16
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._owns_channel = channel is None
        self.channel = channel or grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", max_message_bytes),
                             ("grpc.max_send_message_length", max_message_bytes)])
        self.prediction_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

    # === Requests ===

    def model_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature_name)
        if self.version is not None:
            spec.version.CopyFrom(wrappers_pb2.Int64Value(value=int(self.version)))
        elif self.version_label is not None:
            spec.version_label = self.version_label
        return spec

    def signature_for(self, signature_name: str) -> str:
        if self.use_fp16 and not signature_name.endswith(FP16_SUFFIX):
            return signature_name + FP16_SUFFIX
        return signature_name

    def build_request(self, windows, signature_name: str = DEFAULT_SIGNATURE,
                      output_filter: Sequence[str] = ()) -> predict_pb2.PredictRequest:
        """A PredictRequest for (B, D, H, W, T, C) windows (a single window gains B=1), or
        for a dict {input name: array} when the model has other or several inputs (each
        already batched)."""
        signature_name = self.signature_for(signature_name)
        to_fp16 = signature_name.endswith(FP16_SUFFIX)
        request = predict_pb2.PredictRequest(model_spec=self.model_spec(signature_name),
                                             output_filter=list(output_filter))
        if isinstance(windows, dict):
            inputs = {name: np.asarray(value) for name, value in windows.items()}
        else:
            windows = np.asarray(windows)
            if windows.ndim == 5:
                windows = windows[None]  # (1, D, H, W, T, C)
            inputs = {INPUT_NAME: windows}
        for name, value in inputs.items():
            if np.issubdtype(value.dtype, np.floating):
                value = value.astype(np.float16 if to_fp16 else np.float32, copy=False)
            ndarray_to_tensor_proto(value, out=request.inputs[name])
        return request

    def _call(self, method, request):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as err:
                if err.code() not in RETRY_CODES or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2

    def predict(self, windows, signature_name: str = DEFAULT_SIGNATURE,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run a signature on windows; returns its outputs by name as numpy arrays."""
        request = self.build_request(windows, signature_name, output_filter)
        response = self._call(self.prediction_stub.Predict, request)
        return {k: tensor_proto_to_ndarray(v) for k, v in response.outputs.items()}

    def embed(self, windows) -> np.ndarray:
        """The backbone embedding, (B, C')."""
        return self.predict(windows, EMBED_SIGNATURE)["embedding"]

    def signatures(self) -> dict[str, SignatureSpec]:
        """The served model's signatures (names, dtypes, shapes) from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self.model_spec(), metadata_field=["signature_def"])
        response = self._call(self.prediction_stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {k: SignatureSpec.from_signature_def(k, v) for k, v in signature_map.signature_def.items()
                if not k.startswith("__")}

    def status(self) -> list[tuple[int, str]]:
        """(version, state name) for each version the server reports."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.model_spec())
        response = self._call(self.model_stub.GetModelStatus, request)
        return [(int(s.version), get_model_status_pb2.ModelVersionStatus.State.Name(s.state))
                for s in response.model_version_status]

    def window_shape(self, signature_name: str = DEFAULT_SIGNATURE) -> tuple[int, ...]:
        """(D, H, W, T, C) the server expects, from the signature's "fmri" input."""
        spec = self.signatures()[self.signature_for(signature_name)].inputs[INPUT_NAME]
        return tuple(spec.shape[1:])

    # === Lifetime ===

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> "PredictionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rest_predict_body(windows, signature_name: str = DEFAULT_SIGNATURE) -> dict:
    """The JSON body of TF-Serving's REST `:predict` ("instances" row format) for small windows.

    POST it to http://HOST:8501/v1/models/NAME[/versions/N]:predict. Floats travel as JSON
    numbers (about 5x the raw size), so keep REST for small signatures; use gRPC for full
    windows. The response is {"predictions": [{output: value, ...}, ...]}.
    `serving.rest_client.RestPredictionClient` sends such requests and decodes the answers.
    """
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim == 5:
        windows = windows[None]
    return {"signature_name": signature_name, "instances": [{INPUT_NAME: w.tolist()} for w in windows]}
