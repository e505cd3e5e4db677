#!/usr/bin/env python3
"""The HTTP front of the model server: the only listener on the inference port; TorchServe's own
inference API is a unix socket in the server's private folder behind it.

    front.py --listen HOST:PORT --upstream SOCKET [--max-body N] [--timeout S] -- CMD ...

binds HOST:PORT first (a busy port is one clear error, before TorchServe starts), then runs CMD
(TorchServe) in its own process group and exits with CMD's status when it ends; SIGTERM/SIGINT are
passed on to CMD.

Why: TorchServe 0.12's Java frontend decodes form bodies (application/x-www-form-urlencoded and
multipart/form-data) itself, before any handler runs, and answers 500 to the ones it cannot decode
(ErrorDataDecoderException, Array/StringIndexOutOfBoundsException, ...; 403 for an unknown charset):
the client's fault reported as the server's, and no setting turns that decoder off. The front answers
those 400 (type MalformedForm), and answers requests that are not HTTP/1.x at all (bad framing,
absurd Content-Length, request smuggling's CL+TE, heads past Netty's 4 KiB line / 8 KiB header
limits, bodies past max_request_size) with 4xx JSON of its own before TorchServe sees them. Every
other response is passed on unchanged, status, headers and body.

HTTP/1.1 to clients: keep-alive, chunked request bodies (passed on de-chunked, with Content-Length),
`Expect: 100-continue` (answered here once the head is valid), HTTP/1.0. One upstream connection per
client connection, one request at a time on it (a pipelined request waits for the response before).
Stdlib only: it runs in the serving image and beside `localsage serve` alike.
"""
import asyncio
import json
import re
import signal
import subprocess
import sys

MAX_LINE = 4096  # Netty's HttpServerCodec defaults (TorchServe's frontend uses them)
MAX_HEAD = 8192
MAX_CHUNK_LINE = 4096
# asyncio's read buffer: reading pauses past twice this, so a small one makes a 6 MB body thousands of
# pause/resume cycles; the head limits above are checked on what was read instead
STREAM_LIMIT = 1 << 20
HEAD_TIMEOUT_S = 60  # a client idle (or trickling its head) this long is closed
BODY_TIMEOUT_S = 60  # per read of a body
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
# exceptions of Netty's form decoder that TorchServe turns into 500 or 403 (seen with TorchServe 0.12)
DECODER_ERRORS = re.compile(r"(DecoderException|IllegalArgumentException|CharsetException|"
                            r"IllegalCharsetNameException|IndexOutOfBoundsException)$")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "expect", "content-length"}
TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
           414: "URI Too Long", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class Refused(Exception):
    """A request answered here with `code` and a JSON body; a client connection whose request could not be
    read whole is closed after it."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


def json_response(code, kind, message, close=True, reason=None):
    body = json.dumps({"code": code, "type": kind, "message": message}).encode()
    head = [f"HTTP/1.1 {code} {reason or REASONS.get(code, kind)}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close" if close else "Connection: keep-alive"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_head(reader, timeout):
    """The head's lines (bytes, no CRLF), or None on a clean end of the connection."""
    try:
        async with asyncio.timeout(timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise Refused(400, "BadRequest", "the connection ended inside a request head") from None
    except asyncio.LimitOverrunError:
        raise Refused(431, "HeaderTooLarge", f"request head over {MAX_HEAD} bytes") from None
    except asyncio.TimeoutError:
        raise Refused(408, "RequestTimeout", f"no complete request head within {timeout} s") from None
    lines = raw[:-4].lstrip(b"\r\n").split(b"\r\n")  # RFC 9112 2.2: ignore empty lines before a request
    if len(lines[0]) > MAX_LINE:
        raise Refused(414, "RequestLineTooLong", f"request line over {MAX_LINE} bytes")
    if len(raw) - len(lines[0]) > MAX_HEAD:
        raise Refused(431, "HeaderTooLarge", f"request headers over {MAX_HEAD} bytes")
    return lines


def parse_head(lines):
    """(method, target, version, [(name, value)], {lower name: [values]}) of a request head."""
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not TOKEN.match(parts[0]) or not parts[1] or parts[2] not in VERSIONS:
        raise Refused(400, "BadRequest", "not an HTTP/1.x request line")
    headers, index = [], {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.match(name):  # also obs-fold (a line starting with a space)
            raise Refused(400, "BadRequest", "malformed header line")
        value = value.strip(b" \t")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise Refused(400, "BadRequest", "control character in a header value")
        key = name.decode("ascii").lower()
        headers.append((name, value))
        index.setdefault(key, []).append(value.decode("latin-1"))
    return parts[0], parts[1], parts[2], headers, index


def body_framing(index, max_body):
    """('length', n), ('chunked', None) or ('none', 0) for a request's body."""
    te = [t.strip().lower() for v in index.get("transfer-encoding", []) for t in v.split(",") if t.strip()]
    lengths = {v.strip() for v in index.get("content-length", []) for v in v.split(",")}
    if te:
        if lengths:
            raise Refused(400, "BadRequest", "both Content-Length and Transfer-Encoding")
        if te != ["chunked"]:
            raise Refused(400, "UnsupportedTransferEncoding", "only Transfer-Encoding: chunked is accepted")
        return "chunked", None
    if not lengths:
        return "none", 0
    if len(lengths) != 1 or not all(c in "0123456789" for c in next(iter(lengths))) or not next(iter(lengths)):
        raise Refused(400, "InvalidContentLength", "Content-Length is not one whole number")
    value = next(iter(lengths))
    if len(value) > 18 or int(value) > max_body:
        raise Refused(413, "RequestTooLarge", f"the body is over max_request_size ({max_body} bytes)")
    return "length", int(value)


async def read_exactly(reader, n, timeout):
    try:
        async with asyncio.timeout(timeout):
            return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise Refused(400, "BadRequest", "the connection ended inside a request body") from None
    except asyncio.TimeoutError:
        raise Refused(408, "RequestTimeout", f"no body data for {timeout} s") from None


async def read_line(reader, timeout, what):
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise Refused(400, "BadRequest", f"the connection ended inside {what}") from None
    except asyncio.LimitOverrunError:
        raise Refused(400, "BadRequest", f"{what} too long") from None
    except asyncio.TimeoutError:
        raise Refused(408, "RequestTimeout", f"no body data for {timeout} s") from None
    if len(line) > MAX_CHUNK_LINE:
        raise Refused(400, "BadRequest", f"{what} too long")
    return line[:-2]


async def read_chunked(reader, max_body, timeout):
    body = bytearray()
    while True:
        size = await read_line(reader, timeout, "a chunk size line")
        size = size.split(b";", 1)[0].strip()
        if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
            raise Refused(400, "BadRequest", "malformed chunk size")
        n = int(size, 16)
        if n == 0:
            break
        if len(body) + n > max_body:
            raise Refused(413, "RequestTooLarge", f"the body is over max_request_size ({max_body} bytes)")
        body += await read_exactly(reader, n, timeout)
        if await read_exactly(reader, 2, timeout) != b"\r\n":
            raise Refused(400, "BadRequest", "a chunk does not end with CRLF")
    while await read_line(reader, timeout, "the chunked trailer"):  # trailer fields are dropped
        pass
    return bytes(body)


def send(writer, head, body):
    """One write for a small message (one packet), two for a large one (no copy of a 6 MB body to join
    them; Python 3.11's writelines joins)."""
    if len(body) < 65536:
        writer.write(head + body)
    else:
        writer.write(head)
        writer.write(body)


class Upstream:
    """TorchServe's inference socket: one connection per client connection, opened when first needed."""

    def __init__(self, path, timeout):
        self.path, self.timeout = path, timeout
        self.reader = self.writer = None

    async def exchange(self, head, body, head_only):
        """(status, status line, header lines, body) of one request; Refused(5xx) when it fails."""
        for attempt in (1, 2):
            fresh = self.writer is None
            if fresh:
                try:
                    self.reader, self.writer = await asyncio.open_unix_connection(self.path, limit=STREAM_LIMIT)
                except OSError:
                    raise Refused(503, "ServiceUnavailable", "the model server is not running (yet)") from None
            try:
                send(self.writer, head, body)
                await self.writer.drain()
                async with asyncio.timeout(self.timeout):
                    return await self._response(head_only)
            except asyncio.TimeoutError:
                self.close()
                raise Refused(504, "GatewayTimeout",
                              f"the model server did not answer within {self.timeout} s") from None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                self.close()
                if fresh or attempt == 2:  # a kept-alive connection the server closed meanwhile: retry once
                    raise Refused(502, "BadGateway", "the model server closed the connection") from None
        raise AssertionError("unreachable")

    async def _response(self, head_only):
        while True:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            if status >= 200:
                break  # 1xx interim answers (we send no Expect upstream) are skipped
        headers, te, length, close = [], "", None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key, value = name.strip().lower(), value.strip()
            if key == b"transfer-encoding":
                te = value.lower().decode("latin-1")
            elif key == b"content-length":
                length = int(value)
            elif key == b"connection":
                close = b"close" in value.lower()
            if key.decode("latin-1") not in HOP_BY_HOP:
                headers.append(line)
        if head_only or status in (204, 304):
            body = b""
        elif "chunked" in te:
            body = bytearray()
            while True:
                n = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
                if n == 0:
                    while (await self.reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                body += await self.reader.readexactly(n)
                await self.reader.readexactly(2)
            body = bytes(body)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body, close = await self.reader.read(), True
        if close:
            self.close()
        return status, lines[0], headers, body

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def form_decode_failure(index, status, body):
    """TorchServe's answer to a form it could not decode (a 500, or for an unknown charset a 403, naming
    an exception of Netty's decoder) -> (400, "MalformedForm", message); None for any other answer."""
    ctype = (index.get("content-type") or [""])[0].split(";", 1)[0].strip().lower()
    if status not in (403, 500) or ctype not in FORMS:
        return None
    try:
        doc = json.loads(body)
        kind, message = str(doc.get("type", "")), str(doc.get("message", ""))
    except (ValueError, AttributeError):
        return None
    if not DECODER_ERRORS.search(kind):
        return None
    return 400, "MalformedForm", f"the {ctype} body cannot be decoded ({kind}: {message[:300]})"


async def serve_connection(reader, writer, upstream_path, max_body, timeout):
    upstream = Upstream(upstream_path, timeout)
    try:
        while True:
            try:
                lines = await read_head(reader, HEAD_TIMEOUT_S)
                if lines is None:
                    return
                method, target, version, headers, index = parse_head(lines)
                framing, length = body_framing(index, max_body)
                expect = [v.strip().lower() for v in index.get("expect", [])]
                if expect and expect != ["100-continue"]:
                    raise Refused(417, "ExpectationFailed", "only Expect: 100-continue is understood")
                if expect and version == b"HTTP/1.1" and framing != "none" and length != 0:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if framing == "chunked":
                    body = await read_chunked(reader, max_body, BODY_TIMEOUT_S)
                else:
                    body = await read_exactly(reader, length, BODY_TIMEOUT_S) if length else b""
            except Refused as e:
                writer.write(json_response(e.code, e.kind, e.message))
                await writer.drain()
                return
            tokens = {t.strip().lower() for v in index.get("connection", []) for t in v.split(",")}
            keep_alive = ("close" not in tokens) if version == b"HTTP/1.1" else ("keep-alive" in tokens)
            out = [method + b" " + target + b" HTTP/1.1"]
            out += [n + b": " + v for n, v in headers if n.decode("ascii").lower() not in HOP_BY_HOP]
            if body or framing != "none" or method in (b"POST", b"PUT", b"PATCH"):
                out.append(b"Content-Length: %d" % len(body))
            head = b"\r\n".join(out) + b"\r\n\r\n"
            try:
                status, status_line, resp_headers, resp_body = await upstream.exchange(head, body, method == b"HEAD")
            except Refused as e:  # TorchServe down or too slow: the request itself was whole, the connection stays
                writer.write(json_response(e.code, e.kind, e.message, close=not keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
                continue
            refused = form_decode_failure(index, status, resp_body)
            if refused is not None:
                writer.write(json_response(*refused, close=not keep_alive))
            else:
                out = [status_line, *resp_headers]
                if status not in (204, 304) and not (100 <= status < 200):
                    out.append(b"Content-Length: %d" % len(resp_body))
                out.append(b"Connection: keep-alive" if keep_alive else b"Connection: close")
                send(writer, b"\r\n".join(out) + b"\r\n\r\n", resp_body)
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, OSError):
        pass
    finally:
        upstream.close()
        writer.close()


async def run(sock, upstream_path, cmd, max_body, timeout):
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, upstream_path, max_body, timeout), sock=sock,
        limit=STREAM_LIMIT, backlog=1024)
    child = subprocess.Popen(cmd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: child.poll() is None and child.send_signal(signal.SIGTERM))
    code = await loop.run_in_executor(None, child.wait)
    server.close()
    return code


def command(listen, upstream, max_body, response_timeout, python=sys.executable):
    """The argv prefix that runs this front before a model server command (which follows `--`).
    TorchServe answers its own response timeout (a batch's inference) itself; the front only guards
    against a hung server, so it waits twice that (queueing comes on top) plus 30 s."""
    import os

    return [python, os.path.realpath(__file__), "--listen", listen, "--upstream", str(upstream),
            "--max-body", str(max_body), "--timeout", str(2 * int(response_timeout) + 30), "--"]


def parse_args(argv):
    import argparse

    p = argparse.ArgumentParser(prog="front.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--upstream", required=True, help="TorchServe's inference unix socket")
    p.add_argument("--max-body", type=int, default=6815744, help="max_request_size (bytes)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for TorchServe's answer")
    p.add_argument("cmd", nargs="+", help="-- the model server command")
    return p.parse_args(argv)


def listen(address):
    import socket

    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as e:
        sys.exit(f"serve: cannot listen on {address}: {e.strerror} (another server on that port?)")
    sock.listen(1024)
    return sock


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sock = listen(args.listen)
    return asyncio.run(run(sock, args.upstream, args.cmd, args.max_body, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
