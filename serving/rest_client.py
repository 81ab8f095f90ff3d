"""REST client for TF-Serving's `/v1/models` API (the real server's port 8501 or `tfbrain serve
--rest-port`), with the same calls as the gRPC `PredictionClient`:

    with RestPredictionClient("127.0.0.1:8501", "swift") as client:
        outputs = client.predict(windows)          # {"logits": ..., "probabilities": ...}
        client.signatures(), client.status(), client.window_shape()

Requests use the columnar format (`{"inputs": ...}`, one nested list per input with its
batch axis), answered with `{"outputs": ...}`. Values travel as JSON numbers, float32 in
their shortest exact form, so the outputs equal gRPC's; there is no float16 in JSON (use
gRPC for `_fp16` signatures and for full windows). Only the standard library is used.
Calls have a timeout and are retried with exponential backoff on 503/504 and on a refused
or dropped connection (predict is idempotent), as the gRPC client retries UNAVAILABLE and
DEADLINE_EXCEEDED.
"""

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import types_pb2

from serving.signatures import DEFAULT_SIGNATURE, EMBED_SIGNATURE, EMBEDDING_OUTPUT, FMRI_INPUT, FP16_SUFFIX
from serving.tensors import NUMPY_BY_DTYPE
from serving.validation import SignatureSpec, TensorSpec, check_client_options

RETRY_HTTP_STATUSES = (503, 504)


class RestError(OSError):
    """The server answered an HTTP error; `status` is the HTTP status, `message` its "error" text."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {message}")
        self.status = status
        self.message = message
        self.url = url


def _tensor_spec(name: str, info: Mapping) -> TensorSpec:
    """A TensorSpec from a TensorInfo as TF-Serving's metadata JSON prints it."""
    shape = info.get("tensor_shape", {})
    dims = None if shape.get("unknown_rank") else tuple(int(d["size"]) for d in shape.get("dim", []))
    dtype = info.get("dtype", "DT_INVALID")  # the enum's name, as protobuf's JSON prints enums
    return TensorSpec(name, types_pb2.DataType.Value(dtype) if dtype in types_pb2.DataType.keys() else 0, dims)


class RestPredictionClient:
    """Predict / metadata / status calls against one model over REST.

    Args:
        target: "host:port" (or "http://host:port") of the REST endpoint.
        model_name: the model's name in the URL.
        version: a fixed version number; the server's default (newest) when None.
        version_label: a version label instead of a number (TF-Serving's `/labels/LABEL`).
        timeout_s: timeout of each attempt.
        retries: extra attempts after a retryable failure.
        backoff_s: wait before the first retry; doubled each time.
    """

    def __init__(self, target: str, model_name: str, *, version: int | None = None,
                 version_label: str | None = None, timeout_s: float = 60.0, retries: int = 2,
                 backoff_s: float = 0.2):
        check_client_options(version=version, version_label=version_label, timeout_s=timeout_s, retries=retries)
        self.base_url = (target if "://" in target else f"http://{target}").rstrip("/")
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._signatures = None

    # === Requests ===

    @property
    def model_url(self) -> str:
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            url += f"/versions/{int(self.version)}"
        elif self.version_label is not None:
            url += f"/labels/{urllib.parse.quote(self.version_label, safe='')}"
        return url

    def _call(self, url: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                text = err.read().decode("utf-8", errors="replace")
                try:
                    message = json.loads(text)["error"]
                except (ValueError, KeyError, TypeError):
                    message = text.strip() or err.reason
                if err.code not in RETRY_HTTP_STATUSES or attempt == self.retries:
                    raise RestError(err.code, message, url) from None
            except (urllib.error.URLError, ConnectionError, socket.timeout) as err:
                if attempt == self.retries:
                    reason = getattr(err, "reason", err)
                    raise OSError(f"no answer from {url}: {reason}") from None
            time.sleep(delay)
            delay *= 2

    def build_body(self, windows, signature_name: str = DEFAULT_SIGNATURE) -> dict:
        """The columnar `:predict` body for (B, D, H, W, T, C) windows (a single window gains
        B=1), or for a dict {input name: array} (each already batched)."""
        if signature_name.endswith(FP16_SUFFIX):
            raise ValueError(f"signature {signature_name!r} takes float16, which JSON cannot carry "
                             "(TF-Serving refuses it too): use the float32 signature or gRPC")
        if isinstance(windows, dict):
            inputs = {name: np.asarray(value) for name, value in windows.items()}
        else:
            windows = np.asarray(windows)
            if windows.ndim == 5:
                windows = windows[None]  # (1, D, H, W, T, C)
            inputs = {FMRI_INPUT: windows}
        # float32 first: JSON then carries float32 values, as the gRPC client sends them
        inputs = {name: value.astype(np.float32, copy=False) if np.issubdtype(value.dtype, np.floating)
                  else value for name, value in inputs.items()}
        return {"signature_name": signature_name, "inputs": {k: v.tolist() for k, v in inputs.items()}}

    def predict(self, windows, signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """Run a signature on windows; returns its outputs by name as numpy arrays."""
        outputs = self._call(f"{self.model_url}:predict", self.build_body(windows, signature_name))["outputs"]
        specs = self.signatures()[signature_name].outputs
        if not isinstance(outputs, dict):  # one output: TF-Serving leaves its name out
            outputs = {next(iter(specs)): outputs}
        return {name: np.asarray(value, dtype=NUMPY_BY_DTYPE.get(specs[name].dtype) if name in specs else None)
                for name, value in outputs.items()}

    def embed(self, windows) -> np.ndarray:
        """The backbone embedding, (B, C')."""
        return self.predict(windows, EMBED_SIGNATURE)[EMBEDDING_OUTPUT]

    def signatures(self) -> dict[str, SignatureSpec]:
        """The served model's signatures from `GET .../metadata` (read once, then kept)."""
        if self._signatures is None:
            metadata = self._call(f"{self.model_url}/metadata")
            signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
            self._signatures = {
                name: SignatureSpec(name, {k: _tensor_spec(k, v) for k, v in sig.get("inputs", {}).items()},
                                    {k: _tensor_spec(k, v) for k, v in sig.get("outputs", {}).items()})
                for name, sig in signature_defs.items() if not name.startswith("__")}
        return self._signatures

    def status(self) -> list[tuple[int, str]]:
        """(version, state name) for each version the server reports."""
        response = self._call(self.model_url)
        return [(int(s["version"]), s["state"]) for s in response.get("model_version_status", [])]

    def window_shape(self, signature_name: str = DEFAULT_SIGNATURE) -> tuple[int, ...]:
        """(D, H, W, T, C) the server expects, from the signature's "fmri" input."""
        return tuple(self.signatures()[signature_name].inputs[FMRI_INPUT].shape[1:])

    # === Lifetime (nothing held between calls; kept for symmetry with PredictionClient) ===

    def close(self) -> None:
        pass

    def __enter__(self) -> "RestPredictionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
