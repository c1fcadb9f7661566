"""The HTTP door in front of Triton: every inference request's declared inputs are checked
before tritonserver reads them.

Why: Triton 2.51 (the one nvidia-pytriton 0.7 ships) allocates a JSON request's declared shape
before it counts the values, so one small JSON request declaring latent [1, 4, 100000, 100000]
aborts tritonserver (std::bad_alloc); it has no option to cap a request's size either. So
`serving.start_server` runs Triton's HTTP endpoint on a loopback port of its own and puts this
gate on the public HTTP port. Per request:

    head     <= MAX_HEAD_BYTES, Content-Length given (no chunked bodies), no Content-Encoding
    body     <= max_body(max_bytes), its JSON part <= json_limit(max_bytes)        else 413
    /infer   the JSON part (all of a JSON request, or the first Inference-Header-Content-Length
             bytes of a binary one) parses to {"inputs": [...]}, each input's shape is <= 8
             non-negative ints, its datatype known, its declared bytes (and all inputs' together)
             <= max_bytes (else 413), and its data agrees with its shape: the number of JSON
             values, or binary_data_size (else 400)

A refused request gets Triton's error form, `{"error": "..."}`, and its connection is closed;
nothing else is touched. Accepted bytes are forwarded unchanged and the answers are piped back
unread, so a client sees Triton itself.

gRPC likewise (`GrpcGate`): Triton's gRPC endpoint runs on a loopback port of its own and a grpcio
server on the public port forwards every call as bytes. Its receive limit is max_bytes plus
MAX_HEAD_BYTES (a larger message is RESOURCE_EXHAUSTED before it is read), and a ModelInfer
request whose declared shapes exceed max_bytes is INVALID_ARGUMENT. Without it Triton accepts
messages up to 2 GiB, and every input is copied into the Python backend's shared memory pool,
which grows to the largest request ever seen and never shrinks.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading

import numpy as np

MAX_HEAD_BYTES = 64 * 1024
MAX_RANK = 8
MAX_JSON_BYTES = 64 * 2 ** 20  # the JSON part of a request is parsed here: Python holds ~3x its size
DTYPE_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4,
               "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8, "BYTES": 1}
REASONS = {400: "Bad Request", 411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class Refused(ValueError):
    """A request the gate answers itself: .status is the HTTP status, str() the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_limit(max_bytes: int) -> int:
    """The JSON part's limit: 4x the tensor limit (a value's text is a few bytes more than its
    binary form), at least MAX_HEAD_BYTES and at most MAX_JSON_BYTES (large tensors go binary)."""
    return max(MAX_HEAD_BYTES, min(4 * max_bytes, MAX_JSON_BYTES))


def max_body(max_bytes: int) -> int:
    """The body limit for a tensor limit of max_bytes: the binary tensors plus the JSON part."""
    return max_bytes + json_limit(max_bytes)


def _count_values(data) -> int:
    """The number of scalars in a (nested) JSON list, without recursion."""
    n, stack = 0, [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        else:
            n += 1
    return n


def check_infer(head: bytes, binary_len: int, max_bytes: int) -> None:
    """One inference request's JSON part (all of a JSON request's body, or the first
    Inference-Header-Content-Length bytes of a binary one) and the number of body bytes after it
    -> None, or Refused naming the input and what is wrong."""
    try:
        request = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise Refused(400, f"the request's JSON does not parse: {str(exc)[:200]}") from exc
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise Refused(400, "the request must be a JSON object with a non-empty list 'inputs'")
    total, binary = 0, 0
    for i, inp in enumerate(inputs):
        name = inp.get("name") if isinstance(inp, dict) else None
        if not isinstance(name, str):
            raise Refused(400, f"inputs[{i}] must be an object with a string 'name'")
        dtype, shape = inp.get("datatype"), inp.get("shape")
        if dtype not in DTYPE_BYTES:
            raise Refused(400, f"input {name!r}: datatype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise Refused(400, f"input {name!r}: shape must be a list of at most {MAX_RANK} integers >= 0, "
                               f"got {str(shape)[:100]}")
        count = math.prod(shape)
        nbytes = count * DTYPE_BYTES[dtype]
        total += nbytes
        if nbytes > max_bytes or total > max_bytes:
            raise Refused(413, f"input {name!r} declares shape {shape} of {dtype} = {nbytes} bytes; the server "
                               f"accepts at most {max_bytes} bytes of inputs per request")
        params = inp.get("parameters") or {}
        if not isinstance(params, dict):
            raise Refused(400, f"input {name!r}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or (dtype != "BYTES" and size != nbytes):
                raise Refused(400, f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of "
                                   f"{dtype} ({nbytes} bytes)")
            binary += size
        elif "data" in inp:
            got = _count_values(inp["data"])
            if got != count:
                raise Refused(400, f"input {name!r} declares shape {shape} ({count} values) but holds {got}")
        elif "shared_memory_region" not in params:
            raise Refused(400, f"input {name!r} has neither 'data' nor binary_data_size")
    if binary > binary_len:
        raise Refused(400, f"the inputs declare {binary} bytes of binary data; the body holds {binary_len}")


NUMPY_DTYPES = {"BOOL": np.bool_, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "UINT16": np.uint16,
                "FP16": np.float16, "INT32": np.int32, "UINT32": np.uint32, "FP32": np.float32, "INT64": np.int64,
                "UINT64": np.uint64, "FP64": np.float64}
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                   "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
                   "INT64": "int64_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                   "FP64": "fp64_contents"}


def http_arrays(json_part: bytes, binary: bytes) -> dict:
    """An HTTP request that check_infer passed -> name -> array, for the inputs numpy can hold
    (the JSON values, or the slice of the binary section each input declares)."""
    arrays, offset = {}, 0
    for inp in json.loads(json_part)["inputs"]:
        size = (inp.get("parameters") or {}).get("binary_data_size")
        dtype = NUMPY_DTYPES.get(inp["datatype"])
        if size is not None:
            if dtype is not None:
                arrays[inp["name"]] = np.frombuffer(binary, dtype, math.prod(inp["shape"]), offset).reshape(inp["shape"])
            offset += size
        elif dtype is not None and "data" in inp:
            try:
                arrays[inp["name"]] = np.asarray(inp["data"], dtype).reshape(inp["shape"])
            except (ValueError, TypeError, OverflowError):
                continue  # ragged or out-of-range values: Triton's own parser answers them
    return arrays


def _run_check(check, arrays: dict) -> None:
    try:
        check(arrays)
    except (ValueError, TypeError) as exc:
        raise Refused(400, str(exc)) from exc


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, f"malformed request line {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        if line:
            key, sep, value = line.partition(":")
            if not sep:
                raise Refused(400, f"malformed header line {line[:100]!r}")
            headers[key.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def _answer(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class Gate:
    """An HTTP/1.1 front on (host, port) for Triton's HTTP endpoint on 127.0.0.1:upstream_port.

    Lifecycle: Gate(...) -> start() (binds, or raises OSError naming the port) -> stop()."""

    def __init__(self, host: str, port: int, upstream_port: int, max_bytes: int, check=None):
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.host, self.port, self.upstream_port, self.max_bytes = host, port, upstream_port, max_bytes
        self.check = check  # check(arrays: name -> np.ndarray): ValueError/TypeError refuses the request
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.server = None

    def start(self) -> "Gate":
        async def open_server():
            return await asyncio.start_server(self.handle, self.host, self.port, limit=MAX_HEAD_BYTES,
                                              reuse_address=True)
        try:
            self.server = self.loop.run_until_complete(open_server())
        except OSError as exc:
            raise OSError(f"cannot listen on HTTP port {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self.thread = threading.Thread(target=self.loop.run_forever, name="infgen-gate", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is None:
            return
        async def close():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.thread = None

    async def read_request(self, reader, writer) -> bytes | None:
        """One request's bytes, checked; None at the end of the connection. `Expect: 100-continue`
        (curl sends it for bodies over 1 KiB) is answered here, once the head is checked."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            raise Refused(431, f"request head over {MAX_HEAD_BYTES} bytes") from exc
        method, path, headers = _parse_head(head[:-4])
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise Refused(411, "chunked request bodies are not accepted: send Content-Length")
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise Refused(415, f"compressed requests are not accepted (Content-Encoding "
                               f"{headers['content-encoding']!r})")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise Refused(400, f"Content-Length must be an integer >= 0, got {length_text[:40]!r}")
        length, limit = int(length_text), max_body(self.max_bytes)
        if length > limit:
            raise Refused(413, f"request body of {length} bytes is over the server's limit of {limit} bytes")
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = b"\r\n".join(ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"expect:"))
        if not (method == "POST" and path.split("?")[0].rstrip("/").endswith("/infer")):
            return head + await reader.readexactly(length)
        json_text = headers.get("inference-header-content-length", str(length))
        if not json_text.isdigit() or not 0 < int(json_text) <= length:
            raise Refused(400, f"Inference-Header-Content-Length must be an integer in 1..{length} (the body's "
                               f"length), got {json_text[:40]!r}")
        if int(json_text) > json_limit(self.max_bytes):
            await self.discard(reader, length)
            raise Refused(413, f"the request's JSON part of {json_text} bytes is over the server's limit of "
                               f"{json_limit(self.max_bytes)} bytes; send large tensors as binary data")
        json_part = await reader.readexactly(int(json_text))
        try:
            check_infer(json_part, length - len(json_part), self.max_bytes)
        except Refused:
            await self.discard(reader, length - len(json_part))  # so the client reads the answer
            raise
        rest = await reader.readexactly(length - len(json_part))
        if self.check is not None:
            _run_check(self.check, http_arrays(json_part, rest))
        return head + json_part + rest

    @staticmethod
    async def discard(reader, n: int) -> None:
        while n > 0:
            chunk = await reader.read(min(n, 1 << 20))
            if not chunk:
                return
            n -= len(chunk)

    async def handle(self, reader, writer) -> None:
        up_reader = up_writer = pipe = None
        try:
            while True:
                try:
                    data = await self.read_request(reader, writer)
                except Refused as exc:  # clients wait for each answer, so none is in flight here
                    writer.write(_answer(exc.status, str(exc)))
                    await writer.drain()
                    break
                if data is None:
                    if up_writer is not None:  # the client is done sending: let Triton finish answering
                        up_writer.write_eof()
                        await asyncio.wait([pipe], timeout=600)
                    break
                if up_writer is None:
                    try:
                        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    except OSError:  # Triton is starting, or gone
                        writer.write(_answer(503, "the inference server is not running (starting or stopped)"))
                        await writer.drain()
                        break
                    pipe = asyncio.ensure_future(self.pipe(up_reader, writer))
                up_writer.write(data)
                await up_writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client or Triton went away mid-request: drop the connection
        finally:
            for w in (up_writer, writer):
                if w is not None:
                    w.close()
            if pipe is not None:
                pipe.cancel()

    @staticmethod
    async def pipe(src, dst) -> None:
        """Triton's answers back to the client, unread."""
        try:
            while chunk := await src.read(1 << 20):
                dst.write(chunk)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()


def check_grpc_infer(message: bytes, max_bytes: int, check=None) -> None:
    """A serialized ModelInferRequest -> None, or Refused (413: declared bytes over max_bytes; 400:
    check(arrays) refused its values)."""
    from tritonclient.grpc import service_pb2
    request = service_pb2.ModelInferRequest()
    try:
        request.ParseFromString(message)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError has no stable import path
        raise Refused(400, f"the request is not a ModelInferRequest: {exc}") from exc
    total = 0
    for inp in request.inputs:
        if inp.datatype not in DTYPE_BYTES or len(inp.shape) > MAX_RANK or any(d < 0 for d in inp.shape):
            raise Refused(400, f"input {inp.name!r}: datatype {inp.datatype!r}, shape {list(inp.shape)[:10]} is "
                               f"not a tensor of at most {MAX_RANK} dimensions >= 0")
        nbytes = math.prod(inp.shape) * DTYPE_BYTES[inp.datatype]
        total += nbytes
        if nbytes > max_bytes or total > max_bytes:
            raise Refused(413, f"input {inp.name!r} declares shape {list(inp.shape)} of {inp.datatype} = {nbytes} "
                               f"bytes; the server accepts at most {max_bytes} bytes of inputs per request")
    if check is not None:
        arrays = {}
        for i, inp in enumerate(request.inputs):
            dtype = NUMPY_DTYPES.get(inp.datatype)
            if dtype is None:
                continue
            if len(request.raw_input_contents) == len(request.inputs):
                a = np.frombuffer(request.raw_input_contents[i], dtype)
            else:
                a = np.asarray(getattr(inp.contents, CONTENTS_FIELDS.get(inp.datatype, "bytes_contents")), dtype)
            if a.size == math.prod(inp.shape):
                arrays[inp.name] = a.reshape(tuple(inp.shape))
        _run_check(check, arrays)


class GrpcGate:
    """A grpcio front on (host, port) for Triton's gRPC endpoint on 127.0.0.1:upstream_port: every
    call forwarded as bytes, with a receive limit and ModelInfer's declared shapes checked.

    Lifecycle: GrpcGate(...) -> start() (binds, or raises OSError naming the port) -> stop()."""

    def __init__(self, host: str, port: int, upstream_port: int, max_bytes: int, check=None, workers: int = 16):
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        self.host, self.port, self.upstream_port, self.max_bytes = host, port, upstream_port, max_bytes
        self.check = check
        self.workers = workers
        self.server = self.channel = None

    def start(self) -> "GrpcGate":
        import concurrent.futures

        import grpc
        unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.upstream_port}", options=unlimited)
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(self.workers, "infgen-grpc-gate"),
                                  options=[("grpc.max_receive_message_length", self.max_bytes + MAX_HEAD_BYTES),
                                           ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
        self.server.add_generic_rpc_handlers((_Forward(self),))
        try:
            bound = self.server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            bound, error = 0, exc
        else:
            error = None
        if not bound:
            self.channel.close()
            raise OSError(f"cannot listen on gRPC port {self.host}:{self.port}: {error or 'address in use'}")
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(5).wait(10)
            self.channel.close()
            self.server = None


class _Forward:
    """grpc.GenericRpcHandler: any method of the public port, forwarded to Triton's."""

    def __init__(self, gate: GrpcGate):
        self.gate = gate

    def service(self, details):
        import grpc
        method, channel = details.method, self.gate.channel

        def metadata(context):
            return [(k, v) for k, v in context.invocation_metadata() if not k.startswith(":")]

        def unary(request: bytes, context):
            if method.endswith("/ModelInfer"):
                try:
                    check_grpc_infer(request, self.gate.max_bytes, self.gate.check)
                except Refused as exc:
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.status == 413 else grpc.StatusCode.INVALID_ARGUMENT
                    context.abort(code, str(exc))
            remaining = context.time_remaining()  # about 9.2e18 when the client set no deadline
            try:
                return channel.unary_unary(method)(request, metadata=metadata(context),
                                                   timeout=remaining if remaining < 1e9 else None)
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())

        def stream(requests, context):
            def checked():
                for r in requests:
                    check_grpc_infer(r, self.gate.max_bytes, self.gate.check)
                    yield r
            try:
                yield from channel.stream_stream(method)(checked(), metadata=metadata(context))
            except Refused as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())

        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)
