"""`localsage predict | package | serve`."""
from __future__ import annotations

from .cloud import add_predict_arguments
from ..servefiles import serving_defaults
from .common import print_table


def prediction_rows(results) -> list:
    rows = []
    for path, status, doc in results:
        if status != 200:
            rows.append((path, f"error {status}", "", doc.get("message", "")))
            continue
        preds = doc["predictions"]
        rest = ", ".join(f"{p['label']} {p['probability']:.3f}" for p in preds[1:])
        rows.append((path, preds[0]["label"], f"{preds[0]['probability']:.3f}", rest))
    return rows


def cmd_predict(args):
    topk = {} if args.topk is None else {"topk": args.topk}
    if args.endpoint_name:  # a SageMaker endpoint
        from .. import cloud

        results = cloud.predict_endpoint(args.endpoint_name, args.images, region=args.region, **topk)
    else:
        from .. import serving

        results = serving.predict(args.endpoint, args.images, model=args.model, timeout=args.timeout, **topk)
    print_table(prediction_rows(results), ("IMAGE", "LABEL", "PROBABILITY", "NEXT"))
    return 0 if all(status == 200 for _, status, _ in results) else 1


def cmd_package(args):
    from .. import serving

    print(serving.package(args.job, args.export_path, args.name, args.jobs_dir))
    return 0


def cmd_serve(args):
    from .. import serving

    return serving.serve_job(args.job, args.jobs_dir, args.port, args.name)


def add_parser(subparsers):
    p = subparsers.add_parser("predict", help="send images to an endpoint and print the top labels")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--endpoint", default="http://127.0.0.1:8080", help="server root URL")
    p.add_argument("--model", help="TorchServe model name (/predictions/<model>); default /invocations")
    p.add_argument("--topk", type=int, help=f"labels per image (default {serving_defaults().TOPK})")
    p.add_argument("--timeout", type=float, default=60.0)
    add_predict_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("package", help="make a TorchServe .mar from a job's model dir")
    p.add_argument("job", help="job name (jobs/<name>/model) or a model dir")
    p.add_argument("--export-path", default="model-store")
    p.add_argument("--name", help="model name (default: the job name)")
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs")
    p.set_defaults(func=cmd_package)

    p = subparsers.add_parser("serve", help="TorchServe on 127.0.0.1 with a job's model (foreground)")
    p.add_argument("job", help="job name (jobs/<name>/model) or a model dir")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", help="model name (default: the job name)")
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs")
    p.set_defaults(func=cmd_serve)
