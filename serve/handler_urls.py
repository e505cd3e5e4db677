"""URL inputs of the TorchServe handler (off by default): validation and a pinned download."""

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse

from handler_errors import RequestError


def _host_allowed(host, allowlist):
    host = host.lower().rstrip(".")
    for entry in allowlist:
        entry = entry.lower().rstrip(".")
        if entry.startswith(".") and host.endswith(entry):
            return True
        if host == entry:
            return True
    return False


def _public(addr):
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )


def validate_url(url, allowlist, resolve=socket.getaddrinfo):
    """Check a URL input against the policy; return (scheme, host, port, path, ip).

    Only http/https, no credentials, host in the allow-list, and every address the host
    resolves to must be public (no private, loopback, link-local, multicast, reserved).
    The caller connects to the returned ip, so a second DNS answer cannot differ.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise RequestError(400, "InvalidURL", "url must be a string of at most 2048 characters")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise RequestError(400, "InvalidURL", f"malformed url: {e}")
    if parts.scheme not in ("http", "https"):
        raise RequestError(403, "URLNotAllowed", "only http and https URLs are allowed")
    if parts.username or parts.password:
        raise RequestError(403, "URLNotAllowed", "URLs with credentials are not allowed")
    host = parts.hostname
    if not host:
        raise RequestError(400, "InvalidURL", "url has no host")
    if not _host_allowed(host, allowlist):
        raise RequestError(403, "URLNotAllowed", f"host {host!r} is not in the URL allow-list")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as e:
        raise RequestError(400, "InvalidURL", f"cannot resolve host {host!r}: {e}")
    addrs = sorted({info[4][0] for info in infos})
    if not addrs:
        raise RequestError(400, "InvalidURL", f"host {host!r} has no address")
    for addr in addrs:
        if not _public(addr.split("%")[0]):
            raise RequestError(403, "URLNotAllowed", f"host {host!r} resolves to non-public address {addr}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, host, port, path, addrs[0]


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


def fetch_url(url, settings):
    """Download an allowed URL (no redirects) within the size and time limits."""
    scheme, host, port, path, ip = validate_url(url, settings["url_allowlist"])
    limit, timeout = settings["url_max_bytes"], settings["url_timeout"]
    deadline = time.monotonic() + timeout
    conn = (_PinnedHTTPS if scheme == "https" else _PinnedHTTP)(host, port, ip, timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "localsage-handler", "Accept": "image/*"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RequestError(400, "URLFetchFailed", f"url answered HTTP {resp.status} (redirects are not followed)")
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and (len(length) > 18 or int(length) > limit):
            raise RequestError(413, "ImageTooLarge", f"url content is {length} bytes, limit {limit}")
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise RequestError(400, "URLFetchFailed", f"url download exceeded {timeout} s")
            chunk = resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "ImageTooLarge", f"url content exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except (OSError, http.client.HTTPException) as e:
        raise RequestError(400, "URLFetchFailed", f"url download failed: {e}")
    finally:
        conn.close()
