#!/usr/bin/env python3
"""Capture what GitHub's Copilot CLI sends, against fake GitHub / Copilot servers.

Runs the CLI inside a fresh network namespace (`unshare --net --mount`) that holds only
loopback, so no packet can leave the machine. Inside it:

* a TLS server on 127.0.0.1:443 that presents, per SNI, a certificate signed by a throw-away
  CA (made with the `openssl` CLI), and answers like GitHub / the Copilot API (`respond()`);
* a DNS server on 127.0.0.1:53 answering every A query with 127.0.0.1 (AAAA and the rest:
  no records) and logging the names asked, so every host the CLI tries shows up;
* optionally an HTTP CONNECT proxy on 127.0.0.1:3128 (`--proxy`), logging the targets;
* a private /etc/hosts (localhost only) and /etc/resolv.conf (nameserver 127.0.0.1).

Every request is logged to OUT/requests.jsonl (method, path+query, all headers, body) and to
OUT/requests.txt (readable), DNS queries to OUT/dns.txt, the CLI's stdout/stderr to
OUT/stdout.txt and OUT/stderr.txt. Nothing is redacted: every token is fake.

Usage (as root; the CLI then runs as root, or as nobody with --nobody):

    tests/captures/capture.py --scenario github --out /tmp/cap/github
    tests/captures/capture.py --scenario ghe --nobody --out /tmp/cap/ghe
    tests/captures/capture.py --scenario custom --env COPILOT_GITHUB_TOKEN=gho_x -- -p hi
    tests/captures/capture.py --scenario github --fail /models=500 --out /tmp/cap/f
    tests/captures/capture.py --scenario github --fail 'mcp_registry=200:{"x":1}' --out ...

Scenarios: github, ghe, ghes (GH_HOST=git.corp), ghes-proxy (the GHES technical preview),
actions (a `ghs_` token), byok, offline, notoken, custom (env from --env only).
`--env K=V` adds to / overrides a scenario's environment (`--env K=` removes K).
`--fail PATTERN=STATUS[:BODY|:@FILE]|reset` replaces the answer of matching requests (to see
which calls are required), `--models FILE` the `/models` catalogue, `--proxy` adds an
HTTPS_PROXY, `--no-dns` drops the DNS server, `--no-ca` the CA variables.
Arguments after `--` replace the CLI's default arguments.

Python 3 standard library and the `openssl` command only.
"""

import argparse
import gzip
import json
import os
import pwd
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

# The native binary `cargo xtask setup` installs (a Node single-executable application: no
# system Node needed). `node_modules/.bin/copilot` (npm's loader, run by the system Node)
# starts the same binary.
DEFAULT_CLI = "/opt/egressd-tests/copilot/node_modules/@github/copilot-linux-x64/copilot"
FAKE_TOKEN = "gho_" + "0" * 36
ANSWER = "Hello from the fake Copilot model"
# `--models FILE`: answer GET /models with this file instead (to find what the CLI accepts).
MODELS_OVERRIDE = None
# `--fail PATTERN=STATUS[:BODY|:@FILE]|reset`: requests whose host+path contain PATTERN get
# STATUS with BODY (JSON; default {"message":"Internal Server Error"}), or a reset.
FAILURES = []

# The CLI's own arguments for a quiet, non-interactive prompt-mode run.
DEFAULT_ARGS = [
    "-p", "say hi",
    "--allow-all-tools",
    "--no-auto-update",
    "--no-color",
    "--log-level", "all",
]

# Quiet, non-interactive, no update checks: the same for every scenario.
COMMON_ENV = {
    "COPILOT_AUTO_UPDATE": "false",
    "NO_COLOR": "1",
    "CI": "true",
}

SCENARIOS = {
    "github": {"COPILOT_GITHUB_TOKEN": FAKE_TOKEN},
    "ghe": {"COPILOT_GITHUB_TOKEN": FAKE_TOKEN, "GH_HOST": "acme.ghe.com"},
    "ghes": {"COPILOT_GITHUB_TOKEN": FAKE_TOKEN, "GH_HOST": "git.corp"},
    "ghes-proxy": {
        "COPILOT_PROVIDER_GHES_HOST": "git.corp",
        "COPILOT_PROVIDER_GHES_TOKEN": "ghp_placeholder_ghes",
        "COPILOT_OFFLINE": "true",
        "COPILOT_MODEL": "gpt-5-mini",
    },
    "actions": {"GITHUB_TOKEN": "ghs_placeholder"},
    "byok": {
        "COPILOT_PROVIDER_BASE_URL": "https://myres.openai.azure.com/openai/deployments/gpt-4o",
        "COPILOT_PROVIDER_TYPE": "azure",
        "COPILOT_PROVIDER_API_KEY": "placeholder",
        "COPILOT_MODEL": "gpt-4o",
    },
    "offline": {
        "COPILOT_PROVIDER_BASE_URL": "https://myres.openai.azure.com/openai/deployments/gpt-4o",
        "COPILOT_PROVIDER_TYPE": "azure",
        "COPILOT_PROVIDER_API_KEY": "placeholder",
        "COPILOT_MODEL": "gpt-4o",
        "COPILOT_OFFLINE": "true",
    },
    "notoken": {},
    "custom": {},
}


# --------------------------------------------------------------------------------------------
# The fake services' answers. Keep these the minimal shapes the CLI accepts; the capture
# document quotes them.

MODEL = {
    # The CLI only offers models it knows (gpt-4.1 and made-up ids are "not available");
    # gpt-5-mini is one of them. It calls /responses when supported_endpoints lists it, else
    # /chat/completions (Claude models: /v1/messages).
    "id": "gpt-5-mini",
    "name": "GPT-5 mini",
    "object": "model",
    "vendor": "Azure OpenAI",
    "version": "gpt-5-mini",
    "preview": False,
    "model_picker_enabled": True,
    "model_picker_category": "lightweight",
    "is_chat_default": True,
    "is_chat_fallback": True,
    "capabilities": {
        "family": "gpt-5-mini",
        "type": "chat",
        "object": "model_capabilities",
        "tokenizer": "o200k_base",
        "limits": {
            "max_context_window_tokens": 264000,
            "max_output_tokens": 64000,
            "max_prompt_tokens": 128000,
        },
        "supports": {
            "streaming": True,
            "tool_calls": True,
            "parallel_tool_calls": True,
            "structured_outputs": True,
            "vision": True,
            "reasoning_effort": ["low", "medium", "high"],
        },
    },
    "policy": {"state": "enabled", "terms": "Enable access to the latest GPT-5 mini model."},
    "billing": {"is_premium": False, "multiplier": 0},
    "supported_endpoints": ["/chat/completions", "/responses"],
}


# GET https://GHES/_copilot_proxy_config (COPILOT_PROVIDER_GHES_HOST): what the CLI accepts.
GHES_PROXY_CONFIG = {"providers": [{}], "models": [{"id": "gpt-5-mini"}]}


def user_json(endpoints):
    """`/copilot_internal/user` for a business seat with these `endpoints`."""
    return {
        "login": "octocat",
        "access_type_sku": "copilot_for_business_seat",
        "analytics_tracking_id": "0123456789abcdef0123456789abcdef",
        "assigned_date": "2025-01-01T00:00:00Z",
        "can_signup_for_limited": False,
        "chat_enabled": True,
        "copilot_plan": "business",
        "organization_login_list": ["octo-org"],
        "organization_list": [{"login": "octo-org", "name": "Octo Org"}],
        "is_mcp_enabled": True,
        "restricted_telemetry": False,
        "codex_agent_enabled": False,
        "quota_reset_date": "2099-01-01",
        "quota_snapshots": {
            "chat": {"entitlement": 0, "overage_count": 0, "overage_permitted": False,
                     "percent_remaining": 100.0, "quota_id": "chat", "quota_remaining": 0.0,
                     "remaining": 0, "unlimited": True, "timestamp_utc": "2025-01-01T00:00:00Z"},
            "completions": {"entitlement": 0, "overage_count": 0, "overage_permitted": False,
                            "percent_remaining": 100.0, "quota_id": "completions",
                            "quota_remaining": 0.0, "remaining": 0, "unlimited": True,
                            "timestamp_utc": "2025-01-01T00:00:00Z"},
            "premium_interactions": {"entitlement": 300, "overage_count": 0,
                                     "overage_permitted": False, "percent_remaining": 100.0,
                                     "quota_id": "premium_interactions",
                                     "quota_remaining": 300.0, "remaining": 300,
                                     "unlimited": False,
                                     "timestamp_utc": "2025-01-01T00:00:00Z"},
        },
        "endpoints": endpoints,
    }


def endpoints_for(host):
    """`endpoints` of `/copilot_internal/user` for the GitHub API host `host` (a business
    seat on github.com; a GHE.com tenant's own hosts)."""
    if host.startswith("api.") and host.endswith(".ghe.com"):
        tenant = host[len("api."):]
        return {"api": "https://copilot-api." + tenant,
                "origin-tracker": "https://origin-tracker.githubusercontent.com",
                "proxy": "https://copilot-proxy." + tenant,
                "telemetry": "https://copilot-telemetry-service." + tenant}
    return {"api": "https://api.business.githubcopilot.com",
            "origin-tracker": "https://origin-tracker.business.githubcopilot.com",
            "proxy": "https://proxy.business.githubcopilot.com",
            "telemetry": "https://telemetry.business.githubcopilot.com"}


def sse_chat(model):
    """`/chat/completions` stream: role, the answer in pieces, finish, usage, [DONE]."""
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())

    def chunk(delta, finish=None, usage=None):
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            c["choices"] = []
            c["usage"] = usage
        return "data: " + json.dumps(c) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in ["Hello ", "from the ", "fake Copilot ", "model"]:
        yield chunk({"content": piece})
    yield chunk({}, finish="stop")
    yield chunk({}, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    yield "data: [DONE]\n\n"


def sse_responses(model):
    """`/responses` stream (OpenAI Responses API events)."""
    rid = "resp_" + uuid.uuid4().hex[:24]
    mid = "msg_" + uuid.uuid4().hex[:24]
    created = int(time.time())
    seq = [0]

    def ev(kind, data):
        data = dict(data, type=kind, sequence_number=seq[0])
        seq[0] += 1
        return "event: " + kind + "\ndata: " + json.dumps(data) + "\n\n"

    base = {"id": rid, "object": "response", "created_at": created, "model": model,
            "status": "in_progress", "output": []}
    yield ev("response.created", {"response": base})
    yield ev("response.in_progress", {"response": base})
    item = {"id": mid, "type": "message", "status": "in_progress", "role": "assistant",
            "content": []}
    yield ev("response.output_item.added", {"output_index": 0, "item": item})
    part = {"type": "output_text", "text": "", "annotations": []}
    yield ev("response.content_part.added",
             {"item_id": mid, "output_index": 0, "content_index": 0, "part": part})
    for piece in ["Hello ", "from the ", "fake Copilot ", "model"]:
        yield ev("response.output_text.delta",
                 {"item_id": mid, "output_index": 0, "content_index": 0, "delta": piece})
    yield ev("response.output_text.done",
             {"item_id": mid, "output_index": 0, "content_index": 0, "text": ANSWER})
    done_part = {"type": "output_text", "text": ANSWER, "annotations": []}
    yield ev("response.content_part.done",
             {"item_id": mid, "output_index": 0, "content_index": 0, "part": done_part})
    done_item = dict(item, status="completed", content=[done_part])
    yield ev("response.output_item.done", {"output_index": 0, "item": done_item})
    final = dict(base, status="completed", output=[done_item],
                 usage={"input_tokens": 11, "output_tokens": 7, "total_tokens": 18})
    yield ev("response.completed", {"response": final})


def mcp_readonly(headers, body):
    """The GitHub MCP server (streamable HTTP, JSON answers): no 2026 `server/discover`
    (method not found, so the CLI falls back to `initialize`), then an empty tool list."""
    j = lambda status, obj, extra=None: (status, dict({"Content-Type": "application/json"},
                                                       **(extra or {})),
                                         json.dumps(obj).encode())
    if not isinstance(body, dict) or "method" not in body:
        return j(400, {"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32600, "message": "Invalid Request"}})
    rid, m = body.get("id"), body["method"]
    if rid is None:  # a notification
        return (202, {}, b"")
    if m == "initialize":
        return j(200, {"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": body.get("params", {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "github-mcp-server", "version": "fake"}}},
            {"Mcp-Session-Id": "fake-mcp-session"})
    if m == "tools/list":
        return j(200, {"jsonrpc": "2.0", "id": rid, "result": {"tools": []}})
    return j(200, {"jsonrpc": "2.0", "id": rid,
                   "error": {"code": -32601, "message": "Method not found: " + m}})


def respond(host, method, path, headers, body):
    """The fake's answer: (status, headers, body) where body is bytes or an SSE generator."""
    route = path.split("?", 1)[0]
    # GHES serves the REST API under /api/v3.
    rest = route[len("/api/v3"):] if route.startswith("/api/v3/") else route
    auth = headers.get("authorization", "")
    j = lambda status, obj: (status, {"Content-Type": "application/json; charset=utf-8"},
                             json.dumps(obj).encode())
    bad_creds = j(401, {"message": "Bad credentials",
                        "documentation_url": "https://docs.github.com/rest", "status": "401"})
    # GHES technical preview (COPILOT_PROVIDER_GHES_HOST): the instance's own Copilot proxy.
    if route == "/_copilot_proxy_config":
        return j(200, GHES_PROXY_CONFIG)
    if route.startswith("/_copilot_proxy/"):
        route = path = route[len("/_copilot_proxy"):]
        host = "copilot-proxy"
    is_github_api = (host == "api.github.com" or (host.startswith("api.") and
                     host.endswith(".ghe.com")) or route.startswith("/api/v3/")
                     or host in ("git.corp", "api.git.corp"))
    if is_github_api:
        if rest.startswith("/repos/github/copilot-cli/releases"):
            return j(200, [])  # public: with or without a token
        if not auth:
            return j(401, {"message": "Requires authentication",
                           "documentation_url": "https://docs.github.com/rest",
                           "status": "401"})
        if FAKE_TOKEN not in auth and "placeholder" not in auth:
            return bad_creds
        if rest == "/copilot_internal/user":
            return j(200, user_json(endpoints_for(host)))
        if rest == "/user":
            return j(200, {"login": "octocat", "id": 1, "type": "User", "name": "The Octocat"})
        if rest == "/copilot/mcp_registry":
            return j(200, {"mcp_registries": []})
        if rest.startswith("/repos/github/copilot-cli/releases"):
            return j(200, [])
        if rest.startswith("/copilot_internal/"):
            return j(404, {"message": "Not Found",
                           "documentation_url": "https://docs.github.com/rest",
                           "status": "404"})
        if rest == "/graphql" and method == "POST":
            return j(200, {"data": {"viewer": {"login": "octocat",
                                               "copilotEndpoints": {"api": endpoints_for(host)["api"]}}}})
        return j(404, {"message": "Not Found",
                       "documentation_url": "https://docs.github.com/rest", "status": "404"})
    # The Copilot API (any other host): models, chat, responses, MCP, telemetry.
    if route.endswith("/models") and method == "GET":
        if MODELS_OVERRIDE:
            with open(MODELS_OVERRIDE, "rb") as f:
                return (200, {"Content-Type": "application/json"}, f.read())
        return j(200, {"data": [MODEL], "object": "list"})
    if route.endswith("/chat/completions") and method == "POST":
        model = (body or {}).get("model", MODEL["id"]) if isinstance(body, dict) else MODEL["id"]
        if isinstance(body, dict) and body.get("stream"):
            return (200, {"Content-Type": "text/event-stream"}, sse_chat(model))
        return j(200, {"id": "chatcmpl-x", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": ANSWER},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                 "total_tokens": 18}})
    if route.endswith("/responses") and method == "POST":
        model = (body or {}).get("model", MODEL["id"]) if isinstance(body, dict) else MODEL["id"]
        return (200, {"Content-Type": "text/event-stream"}, sse_responses(model))
    if route.endswith("/mcp/readonly"):
        if method == "POST":
            return mcp_readonly(headers, body)
        if method == "DELETE":  # the session ends
            return (200, {}, b"")
        # GET: no server-initiated SSE stream here (the MCP spec's answer is 405).
        return (405, {"Allow": "POST, DELETE"}, b"")
    if route.endswith("/agents/swe/internal/memory/v0/enabled"):
        return j(200, {"enabled": False})
    if "telemetry" in host or route.endswith("/telemetry"):
        return j(200, {"itemsReceived": 1, "itemsAccepted": 1, "errors": []})
    return j(404, {"message": "Not Found"})


# --------------------------------------------------------------------------------------------
# Plumbing: log, certificates, TLS + HTTP server, DNS, CONNECT proxy.

class Log:
    def __init__(self, out):
        self.lock = threading.Lock()
        self.jsonl = open(os.path.join(out, "requests.jsonl"), "a")
        self.txt = open(os.path.join(out, "requests.txt"), "a")
        self.dns = open(os.path.join(out, "dns.txt"), "a")
        self.t0 = time.time()
        self.n = 0

    def request(self, rec):
        with self.lock:
            self.n += 1
            rec = dict(n=self.n, t=round(time.time() - self.t0, 3), **rec)
            self.jsonl.write(json.dumps(rec) + "\n")
            self.jsonl.flush()
            lines = ["#%d +%.3fs sni=%s %s https://%s%s -> %s" % (
                self.n, rec["t"], rec["sni"], rec["method"], rec["host"], rec["path"],
                rec["status"])]
            lines += ["    %s: %s" % (k, v) for k, v in rec["headers"]]
            if rec.get("body") not in (None, ""):
                b = rec["body"]
                text = json.dumps(b, indent=2) if not isinstance(b, str) else b
                lines += ["    | " + line for line in text.splitlines()]
            if rec.get("response") is not None:
                lines.append("    <= " + rec["response"][:2000])
            self.txt.write("\n".join(lines) + "\n\n")
            self.txt.flush()

    def line(self, what):
        with self.lock:
            self.dns.write("+%.3fs %s\n" % (time.time() - self.t0, what))
            self.dns.flush()


class Certs:
    """A CA and, per name, a leaf signed by it (made with the openssl CLI)."""

    def __init__(self, d):
        self.d = d
        self.lock = threading.Lock()
        self.ctx = {}
        self.ca = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.ca_key,
                        "-out", self.ca, "-days", "2", "-subj", "/CN=capture throwaway CA",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                       check=True, capture_output=True)
        os.chmod(self.ca, 0o644)

    def context(self, name):
        with self.lock:
            if name in self.ctx:
                return self.ctx[name]
            safe = name.replace("*", "_")
            key, csr, crt = (os.path.join(self.d, safe + ext) for ext in (".key", ".csr", ".pem"))
            san = "IP:" + name if name.replace(".", "").isdigit() else "DNS:" + name
            subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                            "-out", csr, "-subj", "/CN=" + name], check=True,
                           capture_output=True)
            ext = os.path.join(self.d, safe + ".ext")
            with open(ext, "w") as f:
                f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth\n"
                        "keyUsage=critical,digitalSignature\n" % san)
            subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey",
                            self.ca_key, "-CAcreateserial", "-out", crt, "-days", "2",
                            "-extfile", ext], check=True, capture_output=True)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(crt, key)
            ctx.set_alpn_protocols(["http/1.1"])
            self.ctx[name] = ctx
            return ctx


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "capture"

    def log_message(self, *a):
        pass

    def handle_any(self):
        host = (self.headers.get("Host") or self.server_sni(self)).split(":")[0].lower()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self.read_chunked()
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, rh, rbody = respond(host, self.command, self.path, headers, body)
        for pattern, how in FAILURES:
            if pattern in host + self.path:
                if how == "reset":
                    self.server.log.request({
                        "sni": self.server_sni(self), "host": host, "method": self.command,
                        "path": self.path, "headers": list(self.headers.items()),
                        "body": body, "status": "reset", "response": None})
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                code, _, text = how.partition(":")
                if text.startswith("@"):
                    with open(text[1:], "rb") as f:
                        text = f.read().decode()
                text = text or json.dumps({"message": "Internal Server Error"})
                status, rh, rbody = int(code), {"Content-Type": "application/json"}, text.encode()
                break
        # Every GitHub and Copilot API answer carries a request id; the CLI takes an error
        # status without one for a proxy's or firewall's ("does not appear to originate from
        # GitHub").
        rh = dict(rh)
        rh.setdefault("X-GitHub-Request-Id", uuid.uuid4().hex[:8].upper() + ":CAPTURE")
        if isinstance(rbody, (bytes, bytearray)):
            shown = rbody.decode("utf-8", "replace")
            self.send_response(status)
            for k, v in rh.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(rbody)))
            self.end_headers()
            self.wfile.write(rbody)
        else:
            self.send_response(status)
            for k, v in rh.items():
                self.send_header(k, v)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = []
            for ev in rbody:
                data = ev.encode()
                events.append(ev)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
            shown = "".join(events)
        self.server.log.request({
            "sni": self.server_sni(self), "host": host, "method": self.command,
            "path": self.path, "headers": list(self.headers.items()), "body": body,
            "status": status, "response": shown})

    def read_chunked(self):
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    @staticmethod
    def server_sni(h):
        return getattr(h.request, "sni_seen", None) or "-"

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


class TLSServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, certs, log):
        self.certs, self.log = certs, log
        super().__init__(addr, Handler)
        base = certs.context("127.0.0.1")

        def on_sni(sslobj, name, _ctx):
            sslobj.sni_seen = name
            if name:
                sslobj.context = certs.context(name)
        base.sni_callback = on_sni
        self.base = base

    def finish_request(self, sock, addr):
        try:
            tls = self.base.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.log.line("TLS handshake from %s failed: %s" % (addr, e))
            return
        self.RequestHandlerClass(tls, addr, self)


def dns_server(log):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    types = {1: "A", 28: "AAAA", 5: "CNAME", 65: "HTTPS", 64: "SVCB", 16: "TXT", 33: "SRV"}
    while True:
        q, peer = s.recvfrom(4096)
        tid, flags, qd = struct.unpack(">HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode())
            i += 1 + q[i]
        qtype, _qclass = struct.unpack(">HH", q[i + 1:i + 5])
        question = q[12:i + 5]
        name = ".".join(labels)
        log.line("DNS %s %s" % (types.get(qtype, qtype), name))
        answers = b""
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
        header = struct.pack(">HHHHHH", tid, 0x8180, 1, 1 if answers else 0, 0, 0)
        s.sendto(header + question + answers, peer)


def connect_proxy(log):
    """An HTTP CONNECT proxy on 127.0.0.1:3128 that tunnels everything to 127.0.0.1:443."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 3128))
    srv.listen(64)

    def pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def one(c):
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(4096)
            if not d:
                return
            head += d
        first = head.split(b"\r\n", 1)[0].decode()
        log.line("PROXY " + first + " | " + " ".join(
            h.decode() for h in head.split(b"\r\n")[1:] if h))
        if not first.startswith("CONNECT "):
            c.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            c.close()
            return
        up = socket.create_connection(("127.0.0.1", 443))
        c.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        threading.Thread(target=pump, args=(c, up), daemon=True).start()
        pump(up, c)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


# --------------------------------------------------------------------------------------------

def inner(a):
    """Inside the new namespaces: loopback up, private hosts/resolv.conf, servers, the CLI."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = a.work
    with open(os.path.join(work, "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n::1 localhost\n")
    with open(os.path.join(work, "resolv.conf"), "w") as f:
        f.write("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
    for name in ("hosts", "resolv.conf"):
        subprocess.run(["mount", "--bind", os.path.join(work, name), "/etc/" + name],
                       check=True)
    log = Log(a.out)
    certs = Certs(os.path.join(work, "pki"))
    shutil.copy(certs.ca, os.path.join(a.out, "ca.pem"))
    srv = TLSServer(("127.0.0.1", 443), certs, log)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    if not a.no_dns:
        threading.Thread(target=dns_server, args=(log,), daemon=True).start()
    if a.proxy:
        threading.Thread(target=connect_proxy, args=(log,), daemon=True).start()

    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "HOME": a.home,
    }
    env.update(COMMON_ENV)
    env.update(SCENARIOS[a.scenario])
    if not a.no_ca:
        env["NODE_EXTRA_CA_CERTS"] = os.path.join(a.out, "ca.pem")
        env["SSL_CERT_FILE"] = os.path.join(a.out, "ca.pem")
    if a.proxy:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:3128"
    for kv in a.env:
        k, _, v = kv.partition("=")
        if v:
            env[k] = v
        else:
            env.pop(k, None)
    args = a.args if a.args else DEFAULT_ARGS
    cmd = [a.cli] + args
    with open(os.path.join(a.out, "command.txt"), "w") as f:
        f.write("env:\n" + "".join("  %s=%s\n" % kv for kv in sorted(env.items())))
        f.write("cmd: %s\nuser: %s\n" % (json.dumps(cmd), "nobody" if a.nobody else "root"))

    def drop():
        if a.nobody:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

    t0 = time.time()
    with open(os.path.join(a.out, "stdout.txt"), "wb") as out, \
            open(os.path.join(a.out, "stderr.txt"), "wb") as err:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             preexec_fn=drop, cwd=a.home)
        try:
            rc = p.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
    time.sleep(0.3)
    logs = os.path.join(a.home, ".copilot", "logs")
    if os.path.isdir(logs):
        shutil.copytree(logs, os.path.join(a.out, "cli-logs"), dirs_exist_ok=True)
    with open(os.path.join(a.out, "exit.txt"), "w") as f:
        f.write("exit: %s after %.1fs\n" % (rc, time.time() - t0))
    print("exit: %s after %.1fs" % (rc, time.time() - t0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="github")
    ap.add_argument("--out", required=True, help="directory for the logs (made fresh)")
    ap.add_argument("--cli", default=DEFAULT_CLI, help="the copilot command")
    ap.add_argument("--nobody", action="store_true", help="run the CLI as uid/gid 65534")
    ap.add_argument("--home", help="HOME for the CLI (default: a fresh temp dir)")
    ap.add_argument("--env", action="append", default=[], help="K=V (K= removes K)")
    ap.add_argument("--proxy", action="store_true", help="set HTTPS_PROXY to a CONNECT proxy")
    ap.add_argument("--no-dns", action="store_true", help="no DNS server (names do not resolve)")
    ap.add_argument("--no-ca", action="store_true", help="do not set NODE_EXTRA_CA_CERTS / SSL_CERT_FILE")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--models", help="a JSON file to answer GET /models with")
    ap.add_argument("--fail", action="append", default=[],
                    help="PATTERN=STATUS[:BODY|:@FILE]|reset: requests whose host+path contain "
                    "PATTERN get this answer instead")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help="CLI arguments (after --)")
    a = ap.parse_args()
    if a.inner:
        global MODELS_OVERRIDE
        MODELS_OVERRIDE = a.models and os.path.abspath(a.models)
        FAILURES.extend(tuple(f.split("=", 1)) for f in a.fail)
        return inner(a)
    if os.geteuid() != 0:
        sys.exit("run as root: the capture makes a network and mount namespace")
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.makedirs(a.out)
    os.chmod(a.out, 0o755)
    work = tempfile.mkdtemp(prefix="copilot-capture-")
    os.makedirs(os.path.join(work, "pki"))
    home = a.home or os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    os.chmod(work, 0o755)
    if a.nobody:
        nobody = pwd.getpwuid(65534)
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
    # Our own options, then the CLI's arguments after `--` (so its flags are not taken as ours).
    ours = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if "--" not in sys.argv:
        ours = [x for x in ours if x not in a.args]
    argv = [sys.executable, os.path.abspath(__file__), "--inner", "--work", work,
            "--home", home] + ours + (["--"] + a.args if a.args else [])
    rc = subprocess.call(["unshare", "--net", "--mount", "--"] + argv)
    if not a.home:
        shutil.rmtree(work, ignore_errors=True)
    print("logs in", a.out)
    sys.exit(rc)


if __name__ == "__main__":
    main()
