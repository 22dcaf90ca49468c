#!/usr/bin/env python3
"""A test OTLP logs receiver for egressd's OTLP audit export.

Stands in for an OpenTelemetry collector in tests. Built on the official generated
definitions (PyPI `opentelemetry-proto`), `grpcio` and `protobuf`, pinned in
xtask/src/setup.rs (PYTHON_PACKAGES) and installed into /opt/egressd-tests/venv by
`cargo xtask setup`; tests/e2e/otlp.rs runs it.

It serves, at once:
  * OTLP/gRPC: opentelemetry.proto.collector.logs.v1.LogsService/Export   (--grpc HOST:PORT)
  * OTLP/HTTP: POST /v1/logs, application/x-protobuf or application/json  (--http HOST:PORT)
Both accept gzip (gRPC message compression; HTTP `Content-Encoding: gzip`). A port of 0
picks a free one. Once both listen it prints exactly one line on stdout:

    READY grpc=127.0.0.1:P1 http=127.0.0.1:P2

Every log record received is appended to --out as one JSON line (flushed per request):
transport, request (1-based export request number, both transports counted together),
encoding (HTTP Content-Encoding; null for gRPC, as grpcio hides it), resource, scope_name,
scope_version, time_unix_nano, observed_time_unix_nano, severity_number, severity_text,
body, attributes, event_name and trace_id/span_id (hex) when set. AnyValues are decoded
to JSON (bytes as base64).

Failure injection:
  --fail-first N      the first N export requests get gRPC UNAVAILABLE / HTTP 503 with
                      `Retry-After: 1`; their records are NOT written.
  --partial-reject N  the first accepted request is answered with partial_success
                      rejected_log_records=N (its records are still written).
SIGTERM/SIGINT stop it cleanly (exit 0); the ports are bound with SO_REUSEADDR (and
without SO_REUSEPORT) so a new receiver can take the same port right away, and a second
one started while the first still runs fails instead of sharing the port.
"""

import argparse
import base64
import gzip
import http.server
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as svc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as svc_grpc

UNAVAILABLE, INVALID_ARGUMENT = 14, 3  # google.rpc.Code


def any_value(v):
    """An AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)  # string_value, bool_value, int_value, double_value


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


class Receiver:
    """State shared by both transports: the output file and the failure injection."""

    def __init__(self, out, fail_first, partial_reject):
        self.out = open(out, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.requests = 0
        self.fail_left = fail_first
        self.partial_reject = partial_reject

    def export(self, request, transport, encoding):
        """Returns (ExportLogsServiceResponse, None), or (None, message) to refuse."""
        with self.lock:
            self.requests += 1
            n = self.requests
            if self.fail_left > 0:
                self.fail_left -= 1
                return None, f"injected failure ({transport} request {n})"
            response = svc.ExportLogsServiceResponse()
            if self.partial_reject:
                response.partial_success.rejected_log_records = self.partial_reject
                response.partial_success.error_message = "injected partial rejection"
                self.partial_reject = 0
            for rl in request.resource_logs:
                resource = attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        line = {
                            "transport": transport,
                            "request": n,
                            "encoding": encoding,
                            "resource": resource,
                            "scope_name": sl.scope.name,
                            "scope_version": sl.scope.version,
                            "time_unix_nano": lr.time_unix_nano,
                            "observed_time_unix_nano": lr.observed_time_unix_nano,
                            "severity_number": lr.severity_number,
                            "severity_text": lr.severity_text,
                            "body": any_value(lr.body),
                            "attributes": attrs(lr.attributes),
                        }
                        if getattr(lr, "event_name", ""):
                            line["event_name"] = lr.event_name
                        if lr.trace_id:
                            line["trace_id"] = lr.trace_id.hex()
                        if lr.span_id:
                            line["span_id"] = lr.span_id.hex()
                        self.out.write(json.dumps(line, sort_keys=True) + "\n")
            self.out.flush()
            return response, None


class LogsService(svc_grpc.LogsServiceServicer):
    def __init__(self, receiver):
        self.receiver = receiver

    def Export(self, request, context):
        # grpcio decompresses before the handler and hides grpc-encoding: encoding is null.
        response, refused = self.receiver.export(request, "grpc", None)
        if refused:
            context.abort(grpc.StatusCode.UNAVAILABLE, refused)
        return response


def varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def status_bytes(code, message):
    """A google.rpc.Status {code=1, message=2} in protobuf wire format, built by hand (the
    message is not part of opentelemetry-proto)."""
    msg = message.encode()
    return b"\x08" + varint(code) + b"\x12" + varint(len(msg)) + msg


def json_ids_to_base64(doc):
    """OTLP/JSON writes traceId/spanId as hex; protobuf's JSON mapping expects base64."""
    for rl in doc.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for lr in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if lr.get(key):
                        lr[key] = base64.b64encode(bytes.fromhex(lr[key])).decode()
    return doc


class HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as OTLP/HTTP clients expect
    receiver = None  # set in main

    def log_message(self, fmt, *args):  # stderr, terse
        sys.stderr.write("receiver http: " + (fmt % args) + "\n")

    def reply(self, status, body, ctype, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def fail(self, status, code, message, json_body, headers=()):
        if json_body:
            body = json.dumps({"code": code, "message": message}).encode()
            self.reply(status, body, "application/json", headers)
        else:
            self.reply(status, status_bytes(code, message), "application/x-protobuf", headers)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers, up to the blank line
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size + 2)[:size])  # data, then CRLF
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        body = self.read_body()
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        is_json = ctype == "application/json"
        if self.path.split("?")[0] != "/v1/logs":
            return self.fail(404, 5, "not found: only /v1/logs is served", is_json)
        if ctype not in ("application/x-protobuf", "application/json"):
            return self.fail(415, INVALID_ARGUMENT, f"unsupported Content-Type {ctype!r}", False)
        encoding = self.headers.get("Content-Encoding", "identity").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding != "identity":
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            request = svc.ExportLogsServiceRequest()
            if is_json:
                json_format.ParseDict(json_ids_to_base64(json.loads(body)), request,
                                      ignore_unknown_fields=True)
            else:
                request.ParseFromString(body)
        except Exception as e:  # malformed: 400, not retryable
            return self.fail(400, INVALID_ARGUMENT, f"bad request: {e}", is_json)
        response, refused = self.receiver.export(request, "http", encoding)
        if refused:
            return self.fail(503, UNAVAILABLE, refused, is_json, [("Retry-After", "1")])
        if is_json:
            self.reply(200, json_format.MessageToJson(response).encode(), "application/json")
        else:
            self.reply(200, response.SerializeToString(), "application/x-protobuf")


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grpc", default="127.0.0.1:0", help="HOST:PORT for OTLP/gRPC")
    ap.add_argument("--http", default="127.0.0.1:0", help="HOST:PORT for OTLP/HTTP")
    ap.add_argument("--out", required=True, help="JSONL file, appended to")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N")
    ap.add_argument("--partial-reject", type=int, default=0, metavar="N")
    args = ap.parse_args()
    receiver = Receiver(args.out, args.fail_first, args.partial_reject)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        compression=grpc.Compression.Gzip,
        options=[("grpc.so_reuseport", 0)],  # SO_REUSEADDR is on by default
    )
    svc_grpc.add_LogsServiceServicer_to_server(LogsService(receiver), server)
    ghost, gport = split_addr(args.grpc)
    gport = server.add_insecure_port(f"{ghost}:{gport}")  # raises if it cannot bind
    if not gport:
        sys.exit(f"receiver: cannot bind gRPC {args.grpc}")
    server.start()

    HttpHandler.receiver = receiver
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    http.server.ThreadingHTTPServer.daemon_threads = True
    httpd = http.server.ThreadingHTTPServer(split_addr(args.http), HttpHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hhost, hport = httpd.server_address[:2]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY grpc={ghost}:{gport} http={hhost}:{hport}", flush=True)
    while not stop.wait(0.5):
        pass
    httpd.shutdown()
    httpd.server_close()
    server.stop(grace=0.5).wait()
    with receiver.lock:
        receiver.out.close()


if __name__ == "__main__":
    main()
