#!/usr/bin/env python3
"""Serve a wheelhouse read-only on 127.0.0.1 while an image build installs from it (.ci/build-image.sh).

    python3 .ci/wheel-server.py DIR [PORT]

Prints its URL on the first line, then serves until stopped or until its parent exits. PORT (default
38511) is fixed because the URL is part of the build's cache key for the dependency layer; when it is
taken the kernel picks a free one (the build still works, it only misses that cache once).
"""
import functools
import http.server
import os
import sys
import threading
import time


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pip fetches ~100 files: no access log
        pass


def main():
    root = os.path.abspath(sys.argv[1])
    if not os.path.isdir(root):
        sys.exit(f"wheel-server: {root} is not a folder (make wheelhouse builds it)")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 38511
    handler = functools.partial(Quiet, directory=root)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"http://127.0.0.1:{server.server_address[1]}/", flush=True)
    parent = os.getppid()

    def watch():  # the build script killed (even by SIGKILL): stop serving
        while os.getppid() == parent:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=watch, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
