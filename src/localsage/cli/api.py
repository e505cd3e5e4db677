"""`localsage api`: the SageMaker API (and S3, STS, IAM, CloudWatch Logs) on loopback, in the foreground. It
prints the lines to export; a notebook run with them makes its cloud calls here, unchanged."""
from __future__ import annotations

import sys

DEFAULT_PORT = 8790
DEFAULT_ROOT = "localsage-api"
BACKENDS = ("docker", "process")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def endpoint_url(host: str, port: int) -> str:
    """The URL clients use: a wildcard address is reached through loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def export_lines(url: str, sdk_config) -> list[str]:
    return [f"export AWS_ENDPOINT_URL={url} AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local "
            "AWS_DEFAULT_REGION=us-east-1",
            f"export SAGEMAKER_USER_CONFIG_OVERRIDE={sdk_config}"]


def cmd_api(args):
    import logging
    import signal

    from localsage.api import server
    from localsage.api.context import Api

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.log_requests else logging.WARNING)
    if not is_loopback(args.host):
        print(f"localsage api: WARNING: listening on {args.host}, not loopback: anyone who reaches this address "
              "can run jobs and read the server's S3 objects (no credentials are checked)", file=sys.stderr)
    api = Api(args.root, jobs_dir=args.jobs_dir, backend=args.backend, image=args.image)
    try:
        httpd = server.make_server(api, args.host, args.port)
    except OSError as exc:
        print(f"localsage api: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
              "(another server on this port? choose one with --port)", file=sys.stderr)
        return 2
    try:
        facts = server.prepare(api)
        url = endpoint_url(args.host, httpd.server_address[1])
        print("\n".join(export_lines(url, facts["sdk_config"])), flush=True)
        print(f"localsage api: {url} — SageMaker ({len(facts['operations'])} operations from "
              f"{', '.join(facts['modules']) or 'no operation modules'}), S3/STS/IAM/CloudWatch Logs (moto); "
              f"folder {api.root}, jobs {api.jobs_dir}, backend {api.backend}; {facts['objects_restored']} S3 "
              "objects restored. Ctrl-C stops.", file=sys.stderr, flush=True)
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # cleanup runs to its end: a second Ctrl-C or SIGTERM does not cut it short (SIGKILL still does)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        httpd.server_close()
        api.shutdown()
    print("localsage api: stopped", file=sys.stderr, flush=True)
    return 0


def add_parser(subparsers):
    p = subparsers.add_parser("api", help="the SageMaker API on loopback: cloud SDK code runs local jobs, unchanged")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT}; 0: a free port)")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help="the server's folder: resources, S3 objects, the SDK defaults file (default %(default)s)")
    p.add_argument("--jobs-dir", help="where the jobs go (default ROOT/jobs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--backend", choices=BACKENDS, default="docker",
                   help="how training jobs and endpoints run (default docker; process: no containers)")
    p.add_argument("--image", help="the image of jobs and endpoints that name none (default localsage:latest)")
    p.add_argument("--log-requests", action="store_true", help="log every request")
    p.set_defaults(func=cmd_api)
