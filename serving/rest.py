"""TF-Serving's REST API (port 8501) on the local server, over the stdlib's ThreadingHTTPServer.

    GET  /v1/models/NAME[/versions/N | /labels/L]              model status (GetModelStatus)
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata     signature_def (GetModelMetadata)
    POST /v1/models/NAME[/versions/N | /labels/L]:predict      {"instances": ...} or {"inputs": ...}
    POST /v1/models/NAME[...]:classify | :regress              tf.Example APIs: refused, see below

It answers what TF-Serving's `http_rest_api_handler.cc` answers: the same paths (matched
case-insensitively), JSON bodies (`serving.json_tensors`), status and metadata JSON (the
protos printed with their field names, int64 as strings), errors as `{"error": "..."}` with
the HTTP status TF-Serving maps each gRPC code to. It shares the model lookup (version
policy, labels) and the request validation (dtype, shape, batch cap) of the gRPC server:
a request is turned into TensorProtos and run through `serving.server.run_signature`.

Differences from TF-Serving, each on purpose: a body over `max_body_bytes` is refused with
413 before it is parsed (TF-Serving has no limit): at once when the client waits for
`100 Continue` or declares more than twice the limit, else after reading and dropping it so
that the client reads the answer (a chunked body: as soon as it passes the limit);
an unknown key in a columnar `inputs` object is refused (TF-Serving ignores it; gRPC refuses
it); paths outside /v1/ answer 404 with an error JSON; no CORS.
"""

import contextlib
import json
import logging
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format, wrappers_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from serving import json_tensors
from serving.server import (ModelRepository, SignatureNotFound, handle_request, model_metadata,
                            model_status, run_signature, signature_spec)
from serving.validation import RequestError

logger = logging.getLogger("serving.rest")

DEFAULT_REST_PORT = 8501
DEFAULT_MAX_BODY_BYTES = 64 * 2**20

# TF-Serving's http_server.cc ToHTTPStatusCode
HTTP_STATUS_BY_CODE = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# TF-Serving's path expressions (http_rest_api_util.cc), case-insensitive like theirs
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.I)
_INT64_MAX = 2**63 - 1
_METHOD_NAMES = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def error_json(message: str) -> str:
    return json.dumps({"error": message}) + "\n"


class RestApi:
    """The REST API over a ModelRepository, without HTTP: `handle(method, path, body)` ->
    (HTTP status, JSON text). The HTTP layer (RestServer) only moves bytes."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        text, error = handle_request(lambda: self._route(method, path, body))
        if error is None:
            return 200, text
        code, message = error
        return HTTP_STATUS_BY_CODE.get(code, 500), error_json(message)

    def _route(self, method: str, path: str, body: bytes) -> str:
        malformed = _invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            model_spec = self._model_spec(name, version, label)
            return self._predict(model_spec, verb.lower(), body)
        if method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, metadata = match.groups()
            if not name:
                raise _invalid("Missing model name in request.")
            model_spec = self._model_spec(name, version, label)
            if metadata:
                response = model_metadata(self.repository, get_model_metadata_pb2.GetModelMetadataRequest(
                    model_spec=model_spec, metadata_field=["signature_def"]))
                return _metadata_json(response)
            response = model_status(self.repository,
                                    get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec))
            return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                             always_print_fields_with_no_presence=True) + "\n"
        raise malformed

    @staticmethod
    def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
        if version is not None:
            if int(version) > _INT64_MAX:
                raise _invalid(f"Failed to convert version: {version} to numeric.")
            spec.version.CopyFrom(wrappers_pb2.Int64Value(value=int(version)))
        if label is not None:
            spec.version_label = urllib.parse.unquote(label)
        return spec

    def _predict(self, model_spec: model_pb2.ModelSpec, verb: str, body: bytes) -> str:
        document = json_tensors.parse_json_object(body)
        signature_name = json_tensors.signature_name_of(document)
        loaded = self.repository.get(model_spec)
        try:
            spec = signature_spec(loaded, signature_name)
        except SignatureNotFound as err:  # TF-Serving's REST path says INVALID_ARGUMENT here
            raise _invalid(err.message) from None
        if verb in _METHOD_NAMES:
            method_name = loaded.signature_defs[spec.name].method_name
            if method_name != _METHOD_NAMES[verb]:
                kind = "classification" if verb == "classify" else "regression"
                raise _invalid(f"Expected {kind} signature method_name to be {_METHOD_NAMES[verb]}. "
                               f"Was: {method_name} (signature {spec.name!r}; use :predict)")
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                               f":{verb} (tf.Example input) is not implemented by the local server")
        inputs, row_format = json_tensors.predict_inputs(document, spec)
        outputs = run_signature(self.repository, loaded, spec, inputs)
        return json_tensors.predict_response_json(outputs, row_format)


def _metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> str:
    """TF-Serving's layout: {"model_spec": ..., "metadata": {"signature_def": SignatureDefMap}}."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.dumps({"model_spec": json_format.MessageToDict(response.model_spec, **options),
                       "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)}},
                      indent=1) + "\n"


class _Handler(BaseHTTPRequestHandler):
    """Reads the body (refusing it above the limit before reading), calls RestApi, writes JSON."""

    protocol_version = "HTTP/1.1"  # keep-alive for curl, requests and web back-ends
    server_version = "tfbrain-serving"
    timeout = 60  # seconds a socket read may wait: an idle or stalled client frees its thread
    server: "_HTTPServer"

    def _reply(self, status: int, text: str, close: bool = False) -> None:
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes | None:
        """The request body, or None after replying with an error (the connection then closes)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._reply(400, error_json(f"Content-Length is not a byte count: {length_text!r}"), close=True)
            return None
        if length > self.server.max_body_bytes:
            if length <= 2 * self.server.max_body_bytes:
                self._discard(length)  # so that a client still sending the body reads the 413
            self._reply_too_large(length)
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        """A `Transfer-Encoding: chunked` body, refused with 413 as soon as it passes the limit."""
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
                if size < 0:
                    raise ValueError  # read(-1) would read to the end of the stream
            except ValueError:
                self._reply(400, error_json(f"malformed chunked body: chunk size line {line[:40]!r}"), close=True)
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailer lines, up to the blank one
                    pass
                return b"".join(parts)
            total += size
            if total > self.server.max_body_bytes:
                self._reply_too_large(total)
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 2**16))  # read and dropped: nothing is kept
            if not chunk:
                break
            length -= len(chunk)

    def _reply_too_large(self, length: int) -> None:
        limit = self.server.max_body_bytes
        self._reply(413, error_json(
            f"request body of {length} bytes is over the REST limit of {limit} bytes "
            f"(--rest-max-body-mb); send smaller batches, or full windows over gRPC"), close=True)

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (curl sends it for bodies over 1 MB): refuse an oversized
        body before the client sends it, instead of inviting it."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if length > self.server.max_body_bytes:
            self._reply_too_large(length)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urllib.parse.urlsplit(self.path).path
        if not path.lower().startswith("/v1/"):
            self._reply(404, error_json(f"no such path {path!r}; the REST API is under /v1/models/NAME"))
            return
        with self.server.busy(), self.server.workers:
            status, text = self.server.api.handle(self.command, path, body)
        self._reply(status, text)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def send_error(self, code, message=None, explain=None):
        """The stdlib's own refusals (a malformed request line, an unsupported method such as
        HEAD, headers too long) as {"error": ...} JSON too, instead of its HTML page."""
        short = self.responses.get(code, ("error",))[0]
        payload = error_json(message or short).encode("utf-8")
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.close_connection = True
        if code < 200 or code in (204, 304) or self.command == "HEAD":
            self.end_headers()
            return
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002  (the stdlib's name) — to logging, not stderr
        logger.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection must not hold up shutdown

    def __init__(self, address, api: RestApi, max_body_bytes: int, max_workers: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.max_body_bytes = max_body_bytes
        self.workers = threading.BoundedSemaphore(max_workers)  # requests run at once
        self._in_flight = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    @contextlib.contextmanager
    def busy(self):
        """Counts a running request, so that `wait_idle` can give it its grace period."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float | None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout_s)


class RestServer:
    """The REST endpoint for a ModelRepository on host:port (`port=0` picks a free port)."""

    def __init__(self, repository: ModelRepository, host: str = "127.0.0.1", port: int = DEFAULT_REST_PORT,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_workers: int = 8):
        if max_body_bytes < 1:
            raise ValueError(f"`max_body_bytes` must be >= 1. Received: {max_body_bytes}")
        self.api = RestApi(repository)
        self.host = host
        self.requested_port = port
        self.max_body_bytes = max_body_bytes
        self.max_workers = max_workers
        self.port = None
        self._httpd = None
        self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> int:
        try:
            self._httpd = _HTTPServer((self.host, self.requested_port), self.api, self.max_body_bytes,
                                      self.max_workers)
        except OSError as err:
            raise OSError(f"could not bind {self.host}:{self.requested_port} for REST: {err.strerror or err} "
                          "(another server?); choose another --rest-port") from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="serving-rest", daemon=True)
        self._thread.start()
        logger.info("REST API on %s", self.url)
        return self.port

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Stop accepting, let running requests finish for up to `grace_s`, then close."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        if not self._httpd.wait_idle(grace_s):
            logger.warning("REST requests still running after %.0f s; closing anyway", grace_s or 0)
        self._httpd.server_close()
        self._httpd = None
