"""`localsage ui | register`: MLflow's UI over the jobs' tracking store, and its model registry."""
from __future__ import annotations

import os
import signal
import subprocess
import sys


def ui_command(store: str, artifacts: str, port: int) -> list:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--artifacts-destination",
            artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def cmd_ui(args):
    from localsage.core import procs
    from localsage.host import records, tracking

    jobs = records.jobs_root(args.jobs_dir)
    uri = os.environ.get(tracking.URI_ENV)
    if uri and uri.split(":", 1)[0] in ("http", "https", "databricks", "arn"):
        print(f"tracking goes to {tracking.redact(uri)} ({tracking.URI_ENV}): its own UI is there")
        return 0
    store = uri or tracking.store_uri(jobs)
    jobs.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI over {tracking.redact(store)}: {url} (loopback only; Ctrl-C stops)", flush=True)
    # the guard takes MLflow's server and its workers down with this process, even when it is SIGKILLed
    guard = [sys.executable, "-m", "localsage.core.groupguard", "--"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes: a viewer
    proc = subprocess.Popen(guard + ui_command(store, str(jobs / tracking.ARTIFACTS), args.port), env=env,
                            start_new_session=True, preexec_fn=procs.die_with_parent(signal.SIGTERM))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def cmd_register(args):
    from localsage.host import registry

    name, version, uri = registry.register(args.job, args.jobs_dir, args.name)
    print(f"registered {args.job} as {name} version {version} in {uri}")
    print(f"serve it: localsage serve models:/{name}/{version}")
    return 0


def add_parser(subparsers):
    p = subparsers.add_parser("ui", help="MLflow's UI over the jobs' tracking store, on 127.0.0.1 (foreground)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs (its mlflow.db)")
    p.set_defaults(func=cmd_ui)

    p = subparsers.add_parser("register", help="register a job's model in MLflow's model registry")
    p.add_argument("job", help="job name")
    p.add_argument("--name", help="registered model name (default: the job name)")
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs")
    p.set_defaults(func=cmd_register)


def add_tracking_flag(parser) -> None:
    parser.add_argument("--no-tracking", action="store_true",
                        help="no MLflow run for the job(s) (default: $MLFLOW_TRACKING_URI, else <jobs>/mlflow.db)")
