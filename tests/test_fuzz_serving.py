"""Fuzzing the served model: a generated corpus of malformed and hostile requests against a real
TorchServe (its own, one per module) with the exported demo model.

Random bytes, bit flips, truncations, extreme aspect ratios, decompression bombs, many-frame GIFs,
deep and huge JSON, huge integers in every field and header, wrong and missing content types, forms
TorchServe's Java frontend cannot decode, raw HTTP with absurd Content-Length values, smuggling,
chunked and pipelined bodies. Each case runs twice, with good JPEG requests interleaved (sent
concurrently, so TorchServe batches good and bad together). Required: no 5xx at all (serve/front.py
answers the forms TorchServe's frontend would answer 500 with 400), every good request 200, the
worker never restarts (same PIDs) and its RSS after the second pass is at
most 10% over the first (glibc keeps freed heap, so passes are compared, not idle).
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures as cf
import io
import json
import random
import socket
import struct
import time
import zlib

import psutil
import pytest
import requests
from PIL import Image

from localsage.host import torchserve
from test_serving import free_ports, model_dir, sample_jpeg, served_model_dir, test_images  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration  # every test here runs jobs, servers or containers

T = 120
HUGE = "9" * 5000  # past Python's 4300-digit int-string limit
BIG = str(2 ** 64)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def with_jpeg_size(jpeg, width, height):
    b = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        sof = b.find(marker)
        if sof > 0:
            b[sof + 5: sof + 9] = struct.pack(">HH", height, width)
            break
    return bytes(b)


def raw(data, ctype="image/jpeg", **extra):
    headers = {"Content-Type": ctype} if ctype is not None else {}
    headers.update(extra)
    return {"kind": "http", "method": "POST", "path": "/predictions/demo", "data": data, "headers": headers}


def as_json(doc=None, text=None, **extra):
    body = text if text is not None else json.dumps(doc).encode()
    return raw(body, "application/json", **extra)


def corpus(jpeg, rng):
    """[(category, case)]: at least 300 hostile or malformed requests, deterministic for a seed."""
    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    png, gif, webp = encode(img, "PNG"), encode(img.convert("P"), "GIF"), encode(img, "WEBP")
    b64 = base64.b64encode(jpeg).decode()
    out = []

    def add(category, case, n=1):
        for _ in range(n):
            out.append((category, case() if callable(case) else case))

    # random bytes under every content type we accept (and some we do not)
    types = ["image/jpeg", "image/png", "application/octet-stream", "application/x-image", "", None,
             "application/json", "multipart/form-data", "text/plain", "image/svg+xml"]
    add("random-bytes", lambda: raw(rng.randbytes(rng.randint(1, 20000)), rng.choice(types)), 40)
    # bit flips and truncations of real files
    for src, ctype, n in ((jpeg, "image/jpeg", 30), (png, "image/png", 20), (gif, "image/gif", 10),
                          (webp, "image/webp", 10)):
        def flipped(src=src, ctype=ctype):
            b = bytearray(src)
            for _ in range(rng.randint(1, 30)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return raw(bytes(b), ctype)

        add("bit-flips", flipped, n)
        add("truncated", lambda src=src, ctype=ctype: raw(src[: rng.randint(1, len(src) - 1)], ctype), n // 2)
    # headers claiming huge or zero dimensions
    for w, h in ((65535, 65535), (65535, 1), (1, 65535), (0, 0), (40000, 40000), (7000, 7000), (0, 100)):
        add("huge-dims", raw(with_jpeg_size(jpeg, w, h), "image/jpeg"))
        add("huge-dims", raw(png_header_only(w, h) + png[33:], "image/png"))
        add("huge-dims", raw(png_header_only(w, h), "image/png"))
    # extreme aspect ratios in tiny valid files (decode fine: answered after the centre crop)
    for w, h in ((2000, 1), (1, 2000), (20000, 1), (1, 40000), (65000, 3), (300, 1), (5000, 2), (2, 9000)):
        add("aspect", raw(encode(Image.new("RGB", (w, h), (rng.randrange(256), 0, 0)), "PNG"), "image/png"))
    add("aspect", raw(encode(Image.new("L", (30000, 1)), "JPEG"), "image/jpeg"))
    add("aspect", raw(encode(Image.new("RGB", (16000, 1)), "WEBP"), "image/webp"))
    # decompression bombs: huge pixel counts in small files (refused from the header), and big ones
    # inside the limits (decoded, within the pixel budget)
    add("bomb", raw(encode(Image.new("1", (10000, 10000)), "PNG", optimize=True), "image/png"))
    add("bomb", raw(encode(Image.new("L", (8000, 6000)), "PNG"), "image/png"))
    add("bomb", raw(encode(Image.new("RGB", (6000, 6000)), "PNG"), "image/png"))
    add("bomb", raw(encode(Image.new("RGB", (6000, 6000)), "JPEG", quality=10), "image/jpeg"))
    add("bomb", raw(encode(Image.new("P", (9000, 9000)), "GIF"), "image/gif"))
    add("bomb", raw(encode(Image.new("1", (20000, 20000)), "TIFF", compression="group4"), "image/tiff"))
    add("bomb", raw(encode(Image.new("L", (4000, 4000)), "TIFF", compression="tiff_deflate"), "image/tiff"))
    bmp = (b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
           + struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 0, 0, 0, 0))
    add("bomb", raw(bmp, "image/bmp"))
    bomb_b64 = base64.b64encode(encode(Image.new("L", (7000, 7000)), "PNG")).decode()
    add("bomb", as_json({"images": [bomb_b64] * 8}))
    add("bomb", as_json({"images": [base64.b64encode(encode(Image.new("RGB", (5000, 5000)), "PNG")).decode()] * 4}))
    # many-frame GIFs
    frames = [Image.new("P", (64, 64), i % 256) for i in range(400)]
    add("gif-frames", raw(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif"))
    big = [Image.new("P", (1500, 1500), i) for i in range(30)]
    add("gif-frames", raw(encode(big[0], "GIF", save_all=True, append_images=big[1:]), "image/gif"))
    anim = encode(Image.new("RGB", (64, 64)), "WEBP", save_all=True,
                  append_images=[Image.new("RGB", (64, 64), (i, i, i)) for i in range(100)])
    add("gif-frames", raw(anim, "image/webp"))
    # deep and huge JSON
    for depth in (100, 1000, 5000, 50_000, 200_000):
        add("deep-json", as_json(text=b'{"image": ' + b"[" * depth + b"]" * depth + b"}"))
        add("deep-json", as_json(text=b"[" * depth + b"]" * depth))
        add("deep-json", as_json(text=b'{"a":' * min(depth, 300_000) + b"1" + b"}" * min(depth, 300_000)))
    add("deep-json", raw(b'{"image": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", None))  # sniffed as JSON
    add("deep-json", raw(b"{" * 100_000, "text/plain"))
    add("huge-json", as_json(text=b"[" + b"1," * 1_000_000 + b"1]"))
    add("huge-json", as_json({"image": "A" * 6_000_000}))
    add("huge-json", as_json({"images": ["x"] * 100_000}))
    add("huge-json", as_json({"image": b64, "pad": "x" * 5_000_000}))
    add("huge-json", as_json({"images": [b64] * 17}))
    add("huge-json", as_json({str(i): i for i in range(200_000)}))
    # huge integers in every field
    for field in ("topk", "image", "images", "url", "urls", "model_name"):
        for value in (BIG, -int(BIG), 1e308, float("inf"), [HUGE], {"n": HUGE}, HUGE):
            doc = {"image": b64, field: value} if field != "image" else {"image": value}
            add("huge-int-field", as_json(text=json.dumps(doc).encode()))
        # the same field as a 5000-digit JSON number (over the int-string limit when parsed)
        text = f'{{"image": "{b64}", "{field}": {HUGE}}}' if field != "image" else f'{{"image": {HUGE}}}'
        add("huge-int-field", as_json(text=text.encode()))
    add("huge-int-field", as_json(text=b'{"image": "' + b64.encode() + b'", "topk": ' + HUGE.encode() + b"}"))
    add("huge-int-field", as_json(text=b'{"image": "' + b64.encode() + b'", "topk": 1e99999}'))
    add("huge-int-field", as_json(text=b'{"image": "' + b64.encode() + b'", "topk": -' + HUGE.encode() + b"}"))
    # huge integers in headers
    for name in ("X-Topk", "X-Amzn-SageMaker-Custom-Attributes", "X-Request-Id", "Accept", "X-Amzn-Trace-Id",
                 "X-Forwarded-For", "Content-Encoding", "Transfer-Encoding-Hint", "Range", "If-Modified-Since"):
        value = ("topk=" + HUGE) if name == "X-Amzn-SageMaker-Custom-Attributes" else HUGE
        add("huge-int-header", raw(jpeg, "image/jpeg", **{name: value}))
        add("huge-int-header", raw(jpeg, "image/jpeg", **{name: BIG}))
    for value in ("-1", "0", "007", "3 ", "3.0", "1e3", "\xb3", "0x3", "3; topk=4", HUGE + "x"):
        add("huge-int-header", raw(jpeg, "image/jpeg", **{"X-Topk": value}))
        add("huge-int-header", raw(jpeg, "image/jpeg", **{"X-Amzn-SageMaker-Custom-Attributes": f"a=1;topk={value}"}))
    # query parameters (/invocations passes them on)
    for value in (HUGE, BIG, "-5", "", "abc", "1" * 4301):
        add("query", {"kind": "http", "method": "POST", "path": f"/invocations?topk={value}", "data": jpeg,
                      "headers": {"Content-Type": "image/jpeg"}})
    add("query", {"kind": "http", "method": "POST", "path": f"/invocations?model_name={HUGE}", "data": jpeg,
                  "headers": {"Content-Type": "image/jpeg"}})
    # wrong and missing content types
    for ctype in ("text/csv", "application/json", "text/plain", "application/xml", "image/svg+xml", "",
                  None, "multipart/form-data", "multipart/form-data; boundary=xyz",
                  "image/jpeg; charset=" + HUGE, "x" * 3000, "application/json; charset=utf-16"):
        add("content-type", raw(jpeg, ctype))
        add("content-type", raw(png, ctype))
    add("content-type", as_json({"image": b64}, **{"Content-Type": "image/jpeg"}))
    # forms TorchServe 0.12's Java frontend decodes itself, before any handler runs, and cannot decode
    # (it answers those 500: ErrorDataDecoderException, Array/StringIndexOutOfBoundsException):
    # serve/front.py makes them the client's 400
    for body in (jpeg, png, b"a=%zz", b"%", b"a=%4", b"topk=%G1"):
        for ctype in ("application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded",
                      "application/x-www-form-urlencoded; charset=bogus"):
            add("form-undecodable", raw(body, ctype))
    b = b"----xyz"
    mixed = (b'Content-Disposition: form-data; name="a"\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n'
             b'--zz\r\nContent-Disposition: file; filename="f"\r\n\r\nx\r\n--zz--')
    for part in (b'Content-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=bogus\r\n\r\nhi',
                 b"Content-Type: image/jpeg\r\n\r\n" + jpeg, b"Content-Disposition: junk\r\n\r\nx",
                 b'Content-Disposition: form-data; name="a"\r\nContent-Type: multipart/mixed\r\n\r\nx', mixed,
                 b"Content-Disposition: form-data; name=\"a\"; filename*=bogus''x%zz\r\n\r\nhi",
                 b'Content-Disposition: form-data; name="a"; filename*=\r\n\r\nhi',
                 b'Content-Disposition: form-data; name="data"; filename="x.jpg"\r\n'
                 b'Content-Length: abc\r\n\r\n' + jpeg):
        add("form-undecodable", raw(b"--" + b + b"\r\n" + part + b"\r\n--" + b + b"--\r\n",
                                    "multipart/form-data; boundary=" + b.decode()))
    for ctype, body in (("multipart/form-data; boundary=", b"--\r\n\r\n"),
                        ("multipart/form-data; boundary=" + HUGE, jpeg),
                        ("multipart/form-data; boundary=" + b.decode() + "; charset=bogus", b"--" + b + b"--\r\n")):
        add("form-undecodable", raw(body, ctype))
    # multipart forms
    for fields in ({"topk": HUGE}, {"topk": BIG}, {"other": "x"}, {"topk": "-1"}):
        add("multipart", {"kind": "form", "files": {"data": ("x.jpg", jpeg, "image/jpeg")}, "fields": fields})
    add("multipart", {"kind": "form", "files": {"a": ("a.jpg", jpeg, "image/jpeg"), "b": ("b.jpg", jpeg, "image/jpeg")},
                      "fields": {}})
    add("multipart", {"kind": "form", "files": {"data": ("x.bin", rng.randbytes(3000), "application/json")},
                      "fields": {}})
    add("multipart", {"kind": "form", "files": {"data": ("x.jpg", b"", "image/jpeg")}, "fields": {}})
    add("multipart", {"kind": "form", "files": {"data": ("x.json", b"[" * 100_000, "application/json")}, "fields": {}})
    # base64 oddities
    for value in ("====", "data:image/jpeg;base64,", "data:,", "A" * 4001, b64[:-3], b64 + "!", "\u2603" * 100,
                  base64.b64encode(rng.randbytes(3000)).decode(), base64.b64encode(png[:200]).decode()):
        add("base64", as_json({"image": value}))
    # methods, empty bodies, oversized bodies
    add("method", {"kind": "http", "method": "GET", "path": "/predictions/demo", "data": None, "headers": {}})
    add("method", {"kind": "http", "method": "PUT", "path": "/predictions/demo", "data": b"", "headers": {}})
    add("method", {"kind": "http", "method": "DELETE", "path": "/predictions/demo", "data": jpeg, "headers": {}})
    add("method", raw(rng.randbytes(7_000_000), "image/jpeg"))
    # raw HTTP: absurd Content-Length values, a body shorter than declared, chunked garbage
    for length in (HUGE[:30], BIG, "-1", "1" * 200, "0x10", "10, 20"):
        add("raw-http", {"kind": "socket", "request": (b"POST /predictions/demo HTTP/1.1\r\nHost: x\r\n"
                                                      b"Content-Type: image/jpeg\r\nContent-Length: " + length.encode()
                                                      + b"\r\nConnection: close\r\n\r\n" + jpeg[:100])})
    add("raw-http", {"kind": "socket", "request": (b"POST /predictions/demo HTTP/1.1\r\nHost: x\r\n"
                                                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                                  b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n")})
    add("raw-http", {"kind": "socket", "request": b"POST /predictions/demo HTTP/1.1\r\nHost: x\r\nX-Topk: "
                     + HUGE.encode() + b"\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"})
    # framing: request smuggling (CL and TE), chunked bodies good and bad, pipelined bad and good, heads too long
    head = b"POST /predictions/demo HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(jpeg[i:i + 4096]), jpeg[i:i + 4096]) for i in range(0, len(jpeg), 4096))
    for request in (head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked + b"0\r\n\r\n",
                    head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked[:5000],
                    head + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked + b"0\r\n\r\n",
                    head + b"Content-Length: %d\r\n\r\n" % len(jpeg[:50]) + jpeg[:50]
                    + head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(jpeg) + jpeg,
                    b"POST /predictions/demo?" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n",
                    head + b"X-Pad: " + b"p" * 9000 + b"\r\n\r\n", b"\x16\x03\x01\x02\x00\x01" + rng.randbytes(500),
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /ping HTTP/1.1\r\nX: a\r\n b\r\n\r\n"):
        add("raw-http", {"kind": "socket", "request": request})
    return out


def send(base, session, case):
    """The HTTP status of one case (None: the server closed the connection without answering)."""
    if case["kind"] == "http":
        r = session.request(case["method"], base + case["path"], data=case["data"], headers=case["headers"], timeout=T)
        return r.status_code, r
    if case["kind"] == "form":
        r = session.post(base + "/predictions/demo", files=case["files"], data=case["fields"], timeout=T)
        return r.status_code, r
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        data = b""
        try:
            s.sendall(case["request"])
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered (or closed) before the whole request was sent
            pass
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, None
    return int(data[9:12]), None


def worker_rss(pids):
    return sum(psutil.Process(p).memory_info().rss for p in pids)


@pytest.fixture(scope="module")
def fuzz_server(served_model_dir, tmp_path_factory):  # noqa: F811 - the fixture imported from test_serving
    logs = tmp_path_factory.mktemp("fuzzlogs")
    port, metrics_port, grpc, grpc_management = free_ports(4)
    ts = torchserve.LocalServer({"demo": served_model_dir}, port=port, metrics_port=metrics_port,
                             grpc_ports=(grpc, grpc_management), log_path=logs / "torchserve.out")
    ts.start(wait_s=240)
    yield ts
    ts.stop()


def test_fuzz_corpus_no_5xx_no_restarts_no_growth(fuzz_server, sample_jpeg, artifacts_dir):  # noqa: F811 - fixture
    rng = random.Random(20261201)
    cases = corpus(sample_jpeg, rng)
    assert len(cases) >= 300, len(cases)
    good = {"kind": "http", "method": "POST", "path": "/predictions/demo", "data": sample_jpeg,
            "headers": {"Content-Type": "image/jpeg"}}
    # every 4th request is a good one; shuffled so bad and good land in the same batches
    schedule = []
    for i, (category, case) in enumerate(cases):
        schedule.append((category, case))
        if i % 4 == 0:
            schedule.append(("good", good))
    rng.shuffle(schedule)
    workers = fuzz_server.worker_pids()
    assert len(workers) == 1
    base = fuzz_server.url
    local = __import__("threading").local()

    def run(item):
        category, case = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            status, resp = send(base, session, case)
        except requests.ConnectionError:
            session.close()
            local.session = None
            status, resp = None, None
        body = None
        if resp is not None and status != 200:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text[:200]
        return category, status, body

    figures = {}
    rss = []
    for n in (1, 2):
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, schedule))
        elapsed = time.monotonic() - t0
        rss.append(worker_rss(workers))
        codes = collections.Counter(str(s) for _, s, _ in results)
        per_category = collections.defaultdict(collections.Counter)
        for category, status, _ in results:
            per_category[category][str(status)] += 1
        figures[f"pass{n}"] = {"requests": len(results), "seconds": round(elapsed, 1), "codes": dict(codes),
                               "by_category": {k: dict(v) for k, v in sorted(per_category.items())},
                               "worker_rss_mb": round(rss[-1] / 2**20, 1)}
        server_errors = [(c, s, b) for c, s, b in results if s is not None and s >= 500]
        assert not server_errors, server_errors[:10]
        bad_good = [(s, b) for c, s, b in results if c == "good" and s != 200]
        assert not bad_good, bad_good[:5]
        # a JSON error body with its own code for every refused request the handler saw
        for category, status, body in results:
            if status is not None and 400 <= status < 500 and isinstance(body, dict) and "type" in body:
                assert body["code"] == status and body["message"], body
        assert fuzz_server.worker_pids() == workers, "a worker died and was restarted"
    figures["cases"] = len(cases)
    figures["rss_ratio"] = round(rss[1] / rss[0], 3)
    (artifacts_dir / "fuzz_serving.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert rss[1] <= 1.10 * rss[0], figures
    r = requests.post(base + "/predictions/demo", data=sample_jpeg, headers={"Content-Type": "image/jpeg"}, timeout=T)
    assert r.status_code == 200 and r.json()["predictions"]
