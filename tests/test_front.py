"""serve/front.py, the HTTP front before TorchServe's inference socket, against a stand-in upstream
(a stdlib HTTP/1.1 server on the unix socket, run as the front's child command as TorchServe is):
raw sockets on the client side, so every byte of framing is the test's own."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRONT = ROOT / "serve" / "front.py"

UPSTREAM = textwrap.dedent('''
    import hashlib, itertools, json, os, socketserver, sys, time
    from http.server import BaseHTTPRequestHandler
    serial = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.conn_id = next(serial)

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"

        def answer(self, status, doc, extra=()):
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/decoder500":
                return self.answer(500, {"code": 500, "type": "ErrorDataDecoderException", "message": "Bad string"})
            if self.path == "/charset403":
                return self.answer(403, {"code": 403, "type": "UnsupportedCharsetException", "message": "bogus"})
            if self.path == "/server500":
                return self.answer(500, {"code": 500, "type": "InternalServerException", "message": "boom"})
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"hello ", b"chunked ", b"world"):
                    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
                self.wfile.write(b"0\\r\\n\\r\\n")
                return
            if self.path == "/close":
                self.close_connection = True
                return self.answer(200, {"closing": True}, [("Connection", "close")])
            self.answer(200, {"method": self.command, "path": self.path, "conn": self.conn_id,
                              "headers": {k.lower(): v for k, v in self.headers.items()},
                              "length": len(body), "sha": hashlib.sha256(body).hexdigest()})

        do_GET = do_PUT = do_POST

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    time.sleep(float(os.environ.get("UPSTREAM_DELAY", "0")))
    with Server(sys.argv[1], Handler) as server:
        server.serve_forever()
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_front(tmp_path, port=None, env=None, max_body=1000, child=None):
    script = tmp_path / "upstream.py"
    script.write_text(UPSTREAM)
    sock = tmp_path / "inference.sock"
    port = port or free_port()
    cmd = [sys.executable, str(FRONT), "--listen", f"127.0.0.1:{port}", "--upstream", str(sock),
           "--max-body", str(max_body), "--timeout", "20", "--", *(child or [sys.executable, str(script), str(sock)])]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, port, sock


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    proc, port, sock = start_front(tmp_path_factory.mktemp("front"))
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the front or its upstream did not start"
        time.sleep(0.05)
    yield port
    stop(proc)


def read_response(f):
    """(status, {lower header: value}, body) of one response from a socket file."""
    status_line = f.readline()
    if not status_line:
        return None, {}, b""
    status = int(status_line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = f.read(int(headers.get("content-length", 0))) if status >= 200 else b""
    return status, headers, body


def exchange(port, data, responses=1, timeout=20):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        f = s.makefile("rb")
        return [read_response(f) for _ in range(responses)]


def post(path, body=b"", ctype="image/jpeg", extra=b"", version=b"HTTP/1.1"):
    return (b"POST " + path + b" " + version + b"\r\nHost: x\r\nContent-Type: " + ctype.encode() + b"\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_keep_alive_and_pipelining_pass_through_one_upstream_connection(front):
    (s1, h1, b1), (s2, h2, b2) = exchange(front, post(b"/echo", b"abc") + post(b"/echo/2", b"defg"), responses=2)
    assert (s1, s2) == (200, 200)
    d1, d2 = json.loads(b1), json.loads(b2)
    assert (d1["path"], d1["length"], d2["path"], d2["length"]) == ("/echo", 3, "/echo/2", 4)  # in order
    assert d1["conn"] == d2["conn"], "the upstream connection was not kept alive"
    assert h1["connection"] == "keep-alive"


def test_a_chunked_body_reaches_the_server_whole_with_a_content_length(front):
    import hashlib

    body = b"".join(bytes([i]) * 300 for i in range(3))
    chunked = (b"".join(b"%x;ext=1\r\n%s\r\n" % (300, body[i:i + 300]) for i in range(0, 900, 300))
               + b"0\r\nX-T: 1\r\n\r\n")
    req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    [(status, _, raw)] = exchange(front, req)
    doc = json.loads(raw)
    assert status == 200 and doc["length"] == 900 and doc["sha"] == hashlib.sha256(body).hexdigest()
    assert "transfer-encoding" not in doc["headers"] and doc["headers"]["content-length"] == "900"


def test_expect_100_continue_is_answered_before_the_body(front):
    with socket.create_connection(("127.0.0.1", front), timeout=20) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        s.sendall(b"hello")
        status, _, body = read_response(f)
    assert status == 200 and json.loads(body)["length"] == 5 and "expect" not in json.loads(body)["headers"]


def test_http_1_0_closes_and_a_chunked_answer_gets_a_length(front):
    with socket.create_connection(("127.0.0.1", front), timeout=20) as s:
        s.sendall(post(b"/chunked", b"x", version=b"HTTP/1.0"))
        f = s.makefile("rb")
        status, headers, body = read_response(f)
        assert f.read() == b"", "an HTTP/1.0 connection without keep-alive stays open"
    assert status == 200 and body == b"hello chunked world" and headers["connection"] == "close"
    assert "transfer-encoding" not in headers


def test_an_upstream_that_closes_is_reopened_for_the_next_request(front):
    (s1, h1, _), = exchange(front, post(b"/close", b"x"))
    (s2, _, b2), (s3, _, b3) = exchange(front, post(b"/close", b"x", extra=b"Connection: keep-alive\r\n")
                                        + post(b"/echo", b"y"), responses=2)
    assert (s1, s2, s3) == (200, 200, 200) and json.loads(b3)["length"] == 1


@pytest.mark.parametrize("request_bytes, code", [
    (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),  # smuggling
    (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", 413),  # over --max-body, refused before the body
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", 413),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX", 400),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 3000 + b"\r\n", 431),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),  # the client ends inside the body
])
def test_malformed_http_gets_4xx_json_and_the_front_keeps_serving(front, request_bytes, code):
    with socket.create_connection(("127.0.0.1", front), timeout=20) as s:
        s.sendall(request_bytes)
        s.shutdown(socket.SHUT_WR)  # nothing more comes: a front waiting for more bytes sees the end
        f = s.makefile("rb")
        status, headers, body = read_response(f)
    assert status == code, (status, body)
    doc = json.loads(body)
    assert doc["code"] == code and doc["type"] and doc["message"] and headers["connection"] == "close"
    [(after, _, _)] = exchange(front, post(b"/echo", b"ok"))
    assert after == 200


def test_a_form_the_server_cannot_decode_is_the_clients_400_other_500s_stay(front):
    form = "application/x-www-form-urlencoded"
    [(status, headers, body)] = exchange(front, post(b"/decoder500", b"a=%zz", ctype=form))
    doc = json.loads(body)
    assert status == 400 and doc == {"code": 400, "type": "MalformedForm", "message": doc["message"]}
    assert "ErrorDataDecoderException" in doc["message"] and headers["connection"] == "keep-alive"
    for ctype in ("multipart/form-data; boundary=x", "Application/X-WWW-Form-Urlencoded"):
        assert exchange(front, post(b"/decoder500", b"--x", ctype=ctype))[0][0] == 400
        assert exchange(front, post(b"/charset403", b"--x", ctype=ctype + "; charset=bogus"))[0][0] == 400
    # the same answer to a body that is not a form, or a form's answer that is not a decoder failure:
    # the server's own failure, passed on as it is
    assert exchange(front, post(b"/decoder500", b"x", ctype="image/jpeg"))[0][0] == 500
    (status, _, body), = exchange(front, post(b"/server500", b"a=b", ctype=form))
    assert status == 500 and json.loads(body)["type"] == "InternalServerException"


def test_before_the_server_listens_requests_get_503_json(tmp_path):
    proc, port, sock = start_front(tmp_path, env={"UPSTREAM_DELAY": "60"})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                [(status, headers, body)] = exchange(port, post(b"/echo", b"x"))
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert status == 503 and json.loads(body)["type"] == "ServiceUnavailable"
        assert headers["connection"] == "keep-alive"  # the request was whole: the client may retry on it
    finally:
        stop(proc)


def test_a_busy_port_is_one_clear_error_and_the_server_is_never_started(tmp_path):
    marker = tmp_path / "started"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc, _, _ = start_front(tmp_path, port=port, child=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
        proc.wait(20)
        err = proc.stderr.read().decode()
        stop(proc)
    assert proc.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in err
    assert not marker.exists()


def test_sigterm_reaches_the_server_and_its_status_is_the_fronts(tmp_path):
    child = [sys.executable, "-c", "import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\nprint('up', flush=True)\ntime.sleep(60)"]
    proc, port, _ = start_front(tmp_path, child=child)
    try:
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 7
    finally:
        stop(proc)


def test_the_front_waits_past_the_slowest_models_own_timeout(tmp_path):
    """TorchServe answers its own response timeout; the front must not cut a slow model off first."""
    from localsage.host import torchserve

    slow, plain = tmp_path / "slow", tmp_path / "plain"
    for d in (slow, plain):
        d.mkdir()
    (slow / "model-config.yaml").write_text("responseTimeout: 300\n")
    server = torchserve.LocalServer({"slow": slow, "plain": plain, "packed": tmp_path / "x.mar"}, port=free_port())
    try:
        cmd = server.command()
        assert cmd[cmd.index("--timeout") + 1] == str(2 * 300 + 30)
        assert torchserve.read_properties(server.config)["inference_address"] == f"unix:{server.inference_socket}"
        assert cmd[cmd.index("--upstream") + 1] == str(server.inference_socket)
    finally:
        server.stop()
    assert torchserve.longest_response_timeout({"plain": plain}, {"default_response_timeout": "60"}) == 60
