"""A small HTTP inference service: one compiled Session shared by every request thread.

    python examples/serve.py model.onnx --port 8000 [--threads N] [--engine onnxruntime]

    curl -s localhost:8000/model
    curl -s -X POST localhost:8000/predict -d '{"input": [[[[0, 1, ...]]]]}'
    curl -s -X POST localhost:8000/predict -H 'Content-Type: application/x-npy' \\
         --data-binary @x.npy

Endpoints:
  POST /predict  a JSON body ``{"inputs": {name: nested list}}`` or ``{"input": nested list}``
                 (one-input models), an ``.npy`` body (``Content-Type: application/x-npy``, the
                 one input) or an ``.npz`` body (``application/x-npz``, one array per input) ->
                 ``{"outputs": {name: nested list}, "argmax": {name: [int]}}`` (argmax over the
                 last axis of every 2-D output: the class of each row)
  GET  /model    the model's inputs and outputs (name, shape, dtype), the engine and threads
  GET  /health   ``{"status": "ok"}``

Every failure is a JSON answer ``{"error": ...}`` naming what was wrong, and the server keeps
serving: a bad request (bad JSON, an input of the wrong name, shape or dtype) gets 400 with the
engine's error message — for ember, the ``ember.InputError`` text; JSON nested deeper than
``MAX_JSON_DEPTH`` levels gets 400 before it is parsed; a body over ``--max-body`` bytes gets 413
without being read, and so does an ``.npz`` whose members would decompress to more than
``--max-body`` bytes in total, or an ``.npy`` whose header declares more (checked from the
headers before anything is allocated, and counted again while decompressing, since headers can
lie); a client that stops sending a body gets 408 and is closed. Only the standard library
and numpy (plus the engine) are used, so this file is the whole service.

Why bounded workers and read timeouts: a thread per connection lets any client that opens
sockets and sends nothing create threads without end. Each connection is served by one of at
most ``--workers`` threads (default: 8 per available CPU, at least 16), for as long as it stays
open, keep-alive requests included; while all are busy, new connections wait in the listen
backlog (``request_queue_size``, beyond which the kernel refuses them) and are accepted as
workers free up, so a burst is queued rather than answered 503. A worker is freed when its
client closes, or when a read waits more than ``--read-timeout`` seconds (an idle keep-alive
connection or a stalled one): the socket is closed, after a 408 answer if the wait was for a
request's body.

Why a run gate: every run already uses ``--threads`` cores, so letting 16 request threads run at
once on 2 cores only makes every request slower (and multiplies OpenMP teams). At most
``--max-inflight`` runs (default: available CPUs // threads, at least 1) execute at a time; the
other request threads wait their turn, which keeps latency = queueing + one fast run.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

import numpy as np

MAX_BODY = 16 << 20        # bytes; a 16 MiB float32 body is ~4M values
READ_TIMEOUT = 5.0         # seconds one read from a client may wait
MAX_JSON_DEPTH = 32        # nesting levels: {"inputs": {name: ...}} plus a rank-30 tensor
NPY_TYPES = ("application/x-npy", "application/npy", "application/octet-stream")
NPZ_TYPES = ("application/x-npz", "application/npz")
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8", "tensor(bool)": "bool", "tensor(float16)": "float16"}


class BadRequest(Exception):
    """A request the service refuses: ``status`` and a message for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---- engines: the same service on ember or onnxruntime ---------------------------------------
class EmberEngine:
    name = "ember"

    def __init__(self, model, threads=None):
        import ember
        self.session = ember.load(model, threads=threads)
        self.threads = self.session.threads
        self.errors = (ember.EmberError,)       # what a request can cause -> 400
        self.inputs = [(i.name, list(i.shape), np.dtype(i.dtype)) for i in self.session.inputs]
        self.outputs = [(o.name, list(o.shape), np.dtype(o.dtype)) for o in self.session.outputs]

    def run(self, feeds: dict) -> dict:
        names = [name for name, _, _ in self.outputs]
        return dict(zip(names, self.session.run(names, feeds)))


class OnnxruntimeEngine:
    name = "onnxruntime"

    def __init__(self, model, threads=None):
        import onnxruntime as ort
        from ember.runtime.threads import default_threads
        self.threads = int(threads) if threads else default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # as in benchmarks/run.py: no spinning between runs, so idle worker threads do not steal
        # the cores the HTTP threads need (onnxruntime also measures faster this way here)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
        self.errors = (InvalidArgument, Fail, ValueError, TypeError, RuntimeError)
        self.inputs = [(i.name, list(i.shape), np.dtype(_ORT_DTYPES.get(i.type, "float32")))
                       for i in self.session.get_inputs()]
        self.outputs = [(o.name, list(o.shape), np.dtype(_ORT_DTYPES.get(o.type, "float32")))
                        for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        names = [name for name, _, _ in self.outputs]
        return dict(zip(names, self.session.run(names, feeds)))


ENGINES = {"ember": EmberEngine, "onnxruntime": OnnxruntimeEngine}


# ---- request bodies -> feeds -----------------------------------------------------------------
def json_array(value, dtype: np.dtype):
    """A JSON nested list as an array of the input's dtype. JSON numbers carry no dtype, so
    integers become floats for a float input and floats narrow to float32; anything else (ragged
    lists, strings, floats for an integer input) is handed over unchanged for the engine to
    reject with its own message."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return value
    if a.dtype.kind in "iuf" and dtype.kind == "f":
        return a.astype(dtype)
    if a.dtype.kind in "iu" and dtype.kind in "iu":
        return a.astype(dtype)
    return a


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, found without parsing it (the
    parser recurses once per level, so the depth is bounded before it runs). Escapes and
    strings are removed first so brackets inside strings do not count."""
    text = re.sub(rb'"[^"]*"', b"", re.sub(rb"\\.", b"", body, flags=re.DOTALL))
    steps = _BRACKET_STEP[np.frombuffer(text.translate(None, _NOT_BRACKETS), np.uint8)]
    depth = deepest = 0
    for start in range(0, len(steps), 1 << 20):      # in slices: a few MB whatever the body
        running = depth + np.cumsum(steps[start:start + (1 << 20)], dtype=np.int64)
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1


def load_npy(data: bytes, what: str, max_bytes: int) -> np.ndarray:
    """An ``.npy`` file's array, its header checked before numpy allocates what it declares."""
    f = io.BytesIO(data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as e:
        raise BadRequest(f"{what} is not a valid .npy file: {e}") from None
    if dtype.hasobject:
        raise BadRequest(f"{what} holds Python objects (dtype {dtype}): send numbers")
    declared = math.prod(shape) * dtype.itemsize
    if declared > max_bytes:
        raise BadRequest(f"{what} declares shape {shape} of {dtype} ({declared:,} bytes), over "
                         f"the limit of {max_bytes:,} bytes (--max-body)", 413)
    if declared != len(data) - f.tell():
        raise BadRequest(f"{what} is not a valid .npy file: its header declares {declared:,} "
                         f"bytes of data, it holds {len(data) - f.tell():,}")
    f.seek(0)
    try:
        return fmt.read_array(f, allow_pickle=False)
    except Exception as e:
        raise BadRequest(f"{what} is not a valid .npy file: {e}") from None


def unzip_members(body: bytes, max_bytes: int) -> dict:
    """An ``.npz`` body's members as bytes, refused with 413 once they would decompress to more
    than ``max_bytes`` in total: first from the sizes the zip headers declare, then by counting
    while decompressing (a forged header must not be believed)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
    except Exception as e:
        raise BadRequest(f"body is not a valid .npz file: {e}") from None
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise BadRequest(f".npz members declare {declared:,} bytes decompressed, over the limit "
                         f"of {max_bytes:,} bytes (--max-body)", 413)
    left, out = max_bytes, {}
    try:
        for m in members:
            chunks = []
            with archive.open(m) as stream:
                while chunk := stream.read(min(1 << 20, left + 1)):
                    left -= len(chunk)
                    if left < 0:
                        raise BadRequest(f".npz member {m.filename!r} decompresses past the "
                                         f"limit of {max_bytes:,} bytes (--max-body)", 413)
                    chunks.append(chunk)
            out[m.filename] = b"".join(chunks)
    except BadRequest:
        raise
    except Exception as e:
        raise BadRequest(f"body is not a valid .npz file: {e}") from None
    return out


def load_npz(body: bytes, max_bytes: int) -> dict:
    """The arrays of an ``.npz`` body, named as ``np.savez`` names them (member ``x.npy`` is
    input ``x``)."""
    arrays = {}
    for name, data in unzip_members(body, max_bytes).items():
        if not name.endswith(".npy"):
            raise BadRequest(f".npz member {name!r} is not an .npy array")
        arrays[name[:-4]] = load_npy(data, f".npz member {name!r}", max_bytes)
    return arrays


def parse_body(body: bytes, content_type: str, inputs: list, max_bytes: int = MAX_BODY) -> dict:
    """The feeds a request body describes, or ``BadRequest``. ``max_bytes`` bounds what a
    compressed or header-described body may expand to."""
    names = [name for name, _, _ in inputs]
    dtypes = {name: dtype for name, _, dtype in inputs}
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in NPY_TYPES:
        if len(names) != 1:
            raise BadRequest(f"an .npy body feeds a one-input model; this model's inputs are "
                             f"{names}: send an .npz (application/x-npz) or JSON {{\"inputs\": "
                             f"{{...}}}}")
        return {names[0]: load_npy(body, "body", max_bytes)}
    if ctype in NPZ_TYPES:
        return load_npz(body, max_bytes)
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), dict) and len(doc) == 1:
        return {k: json_array(v, dtypes[k]) if k in dtypes else v
                for k, v in doc["inputs"].items()}
    if isinstance(doc, dict) and "input" in doc and len(doc) == 1:
        if len(names) != 1:
            raise BadRequest(f"{{\"input\": ...}} feeds a one-input model; this model's inputs "
                             f"are {names}: send {{\"inputs\": {{name: values}}}}")
        return {names[0]: json_array(doc["input"], dtypes[names[0]])}
    raise BadRequest("expected a JSON object {\"inputs\": {name: nested list}} or "
                     "{\"input\": nested list}, an .npy body (Content-Type: application/x-npy) "
                     "or an .npz body (application/x-npz)")


def answer(outputs: dict) -> dict:
    """Outputs as nested lists, plus the argmax of every 2-D output (a class per row)."""
    doc = {"outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()}}
    argmax = {k: np.asarray(v).argmax(axis=-1).tolist() for k, v in outputs.items()
              if np.ndim(v) == 2 and np.size(v)}
    if argmax:
        doc["argmax"] = argmax
    return doc


# ---- the HTTP layer --------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: a client reuses its connection
    server_version = "ember-serve/0.1"
    # TCP_NODELAY: headers and body are two writes, and Nagle's algorithm would hold the body
    # until the client's delayed ACK of the headers (40 ms on Linux) — every keep-alive answer
    # would take 40 ms however fast the model is
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.read_timeout     # StreamRequestHandler sets it on the socket
        super().setup()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(200, {"status": "ok"})
        elif path == "/model":
            self._send(200, self.server.describe())
        else:
            self._send(404, {"error": f"no such endpoint: GET {path} (try /predict, /model, "
                                      f"/health)"})

    def do_POST(self):
        path = urlsplit(self.path).path
        if path != "/predict":
            self._discard_body()
            self._send(404, {"error": f"no such endpoint: POST {path} (try /predict)"})
            return
        try:
            body = self._read_body()
            feeds = parse_body(body, self.headers.get("Content-Type", "application/json"),
                               self.server.engine.inputs, self.server.max_body)
            self._send(200, answer(self.server.predict(feeds)))
        except BadRequest as e:
            self._send(e.status, {"error": str(e)})
        except self.server.engine.errors as e:
            self._send(400, {"error": str(e), "type": type(e).__name__})
        except Exception as e:   # a bug, not the client's fault: say so, keep serving
            self._send(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise BadRequest("chunked bodies are not supported: send Content-Length", 411)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise BadRequest("a POST needs a Content-Length header", 411) from None
        if length < 0 or length > self.server.max_body:
            self.close_connection = True    # the unread body must not be parsed as a request
            raise BadRequest(f"body of {length:,} bytes is over the limit of "
                             f"{self.server.max_body:,} bytes (--max-body)", 413)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise BadRequest(f"the body did not arrive within {self.server.read_timeout:g} s "
                             f"(--read-timeout)", 408) from None
        if len(body) < length:
            self.close_connection = True
            raise BadRequest(f"the connection closed after {len(body):,} of {length:,} body "
                             f"bytes")
        return body

    def _discard_body(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if 0 <= length <= self.server.max_body:
            try:
                self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
        else:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, headers too long, an unknown
        method) as JSON like every other answer, and the connection closed."""
        self.close_connection = True
        short, long = self.responses.get(code, ("error", ""))
        self._send(code, {"error": message or f"{short}: {long}"})

    def _send(self, status: int, doc: dict):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)


def default_workers() -> int:
    from ember.runtime.threads import default_threads
    return max(16, 8 * default_threads())


class InferenceServer(HTTPServer):
    """An HTTP server holding one engine (one Session), serving each connection in a thread of
    its own, at most ``workers`` of them at once, with a gate on concurrent runs."""

    request_queue_size = 64

    def __init__(self, address, engine, max_body=MAX_BODY, max_inflight=None, quiet=False,
                 workers=None, read_timeout=READ_TIMEOUT):
        super().__init__(address, Handler)
        self.engine, self.max_body, self.quiet = engine, int(max_body), quiet
        self.read_timeout = float(read_timeout)
        if max_inflight is None:
            from ember.runtime.threads import default_threads
            max_inflight = max(1, default_threads() // engine.threads)
        self.max_inflight = int(max_inflight)
        self._gate = threading.BoundedSemaphore(self.max_inflight)
        self.workers = int(workers) if workers is not None else default_workers()
        self._worker_slots = threading.BoundedSemaphore(self.workers)
        self._stopping = threading.Event()

    @property
    def worker_name(self) -> str:
        """The name every connection thread of this server carries."""
        return f"serve:{self.server_address[1]} worker"

    def process_request(self, request, client_address):
        """Take a worker slot, then serve the connection in a thread. While no slot is free the
        accept loop waits here, so further connections stay in the listen backlog; it looks up
        now and then so ``shutdown()`` is not kept waiting."""
        while not self._worker_slots.acquire(timeout=0.1):
            if self._stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            threading.Thread(target=self._serve_connection, args=(request, client_address),
                             name=self.worker_name, daemon=True).start()
        except BaseException:
            self._worker_slots.release()
            self.shutdown_request(request)
            raise

    def _serve_connection(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._worker_slots.release()

    def handle_error(self, request, client_address):
        """A connection that failed outside a request (the client vanished mid-answer): one
        line in the log, not a traceback; the server goes on."""
        if not self.quiet:
            error = sys.exc_info()[1]
            print(f"{client_address[0]}:{client_address[1]}: connection dropped: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)

    def shutdown(self):
        self._stopping.set()
        super().shutdown()

    def predict(self, feeds: dict) -> dict:
        with self._gate:
            return self.engine.run(feeds)

    def describe(self) -> dict:
        def io(rows):
            return [{"name": n, "shape": shape, "dtype": dt.name} for n, shape, dt in rows]
        return {"engine": self.engine.name, "threads": self.engine.threads,
                "max_inflight": self.max_inflight, "workers": self.workers,
                "read_timeout": self.read_timeout, "inputs": io(self.engine.inputs),
                "outputs": io(self.engine.outputs)}


def make_server(model, host: str = "127.0.0.1", port: int = 0, threads: int | None = None,
                engine: str = "ember", max_body: int = MAX_BODY, max_inflight: int | None = None,
                quiet: bool = False, workers: int | None = None,
                read_timeout: float = READ_TIMEOUT) -> InferenceServer:
    """Load ``model`` (a path or the file's bytes) on ``engine`` and bind the server (port 0:
    any free port, see ``server.server_address``). Call ``serve_forever()`` to serve, e.g. in a
    thread, and ``shutdown()`` + ``server_close()`` to stop."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {sorted(ENGINES)}")
    return InferenceServer((host, port), ENGINES[engine](model, threads=threads),
                           max_body=max_body, max_inflight=max_inflight, quiet=quiet,
                           workers=workers, read_timeout=read_timeout)


def positive_int(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def positive_float(text):
    x = float(text)
    if not x > 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an .onnx file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="threads per run (default: the CPUs this process may use)")
    ap.add_argument("--engine", choices=sorted(ENGINES), default="ember")
    ap.add_argument("--max-body", type=positive_int, default=MAX_BODY,
                    help="bytes a body may have, and an .npz body may decompress to")
    ap.add_argument("--max-inflight", type=positive_int, default=None,
                    help="runs executing at once (default: CPUs // threads)")
    ap.add_argument("--workers", type=positive_int, default=None,
                    help="connections served at once; more wait in the listen backlog "
                         "(default: 8 per CPU, at least 16)")
    ap.add_argument("--read-timeout", type=positive_float, default=READ_TIMEOUT,
                    help="seconds a read from a client may wait before its connection is "
                         "closed")
    ap.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = ap.parse_args(argv)
    try:
        server = make_server(args.model, args.host, args.port, args.threads, args.engine,
                             args.max_body, args.max_inflight, args.quiet, args.workers,
                             args.read_timeout)
    except Exception as e:     # a bad model file: one line, not a traceback
        print(f"serve: cannot load {args.model}: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {args.model} on http://{host}:{port} ({server.engine.name}, "
          f"{server.engine.threads} threads, {server.max_inflight} run(s) at a time, "
          f"{server.workers} workers)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
