"""`localsage predict | package | serve`."""
from __future__ import annotations

from localsage.cli.cloud import add_predict_arguments
from localsage.cli.common import pairs, print_table
from localsage.core.serve_dir import serving_defaults


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
        from localsage.host.cloud.endpoints import predict_endpoint

        results = predict_endpoint(args.endpoint_name, args.images, region=args.region, **topk)
    else:
        from localsage.host import torchserve

        results = torchserve.predict(args.endpoint, args.images, model=args.model, timeout=args.timeout, **topk)
    print_table(prediction_rows(results), ("IMAGE", "LABEL", "PROBABILITY", "NEXT"))
    return 0 if all(status == 200 for _, status, _ in results) else 1


def _script_model(args):
    """(model dir, unpacked temp dir or None) when args name a script model (a user's inference.py), else None."""
    from localsage.host import torchserve_script

    try:
        model_dir, unpacked = torchserve_script.resolve_model(args.job, args.jobs_dir)
    except FileNotFoundError:
        return None  # the built-in path reports it
    if args.entry_point or args.source_dir or torchserve_script.is_script_model(model_dir):
        return model_dir, model_dir if unpacked else None
    if unpacked:  # a model.tar.gz of a built-in model: serve the unpacked dir
        return model_dir, model_dir
    return None


def _remove(path):
    import shutil

    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def cmd_package(args):
    from localsage.host import torchserve, torchserve_script

    script = _script_model(args)
    if script is None:
        print(torchserve.package(args.job, args.export_path, args.name, args.jobs_dir))
        return 0
    try:
        name = args.name or torchserve._model_name(args.job).split(".tar")[0]
        print(torchserve_script.package_script(script[0], args.export_path, name, args.entry_point, args.source_dir))
    finally:
        _remove(script[1])
    return 0


def cmd_serve(args):
    env = pairs(args.env, "--env")  # refused before anything starts
    from localsage.host import registry, torchserve, torchserve_script

    if registry.is_model_uri(args.job):  # models:/NAME/VERSION or models:/NAME@alias: fetched, then as a folder
        model_dir, fetched = registry.fetch(args.job, args.jobs_dir)
        args.name = args.name or args.job[len(registry.SCHEME):].split("/")[0].split("@")[0]
        args.job = str(model_dir)
        try:
            return cmd_serve(args)
        finally:
            _remove(fetched)
    script = _script_model(args)
    if script is None:
        return torchserve.serve_job(args.job, args.jobs_dir, args.port, args.name, env=env)
    model_dir, unpacked = script
    try:
        if not torchserve_script.is_script_model(model_dir) and not (args.entry_point or args.source_dir):
            return torchserve.serve_job(model_dir, args.jobs_dir, args.port, args.name or "model", env=env)
        return torchserve_script.serve_script(model_dir, args.port, args.name or "model", args.entry_point,
                                              args.source_dir, env=env)
    finally:
        _remove(unpacked)


def _add_script_arguments(p):
    p.add_argument("--entry-point", help="script mode: the inference module in code/ (default $SAGEMAKER_PROGRAM "
                                         "or inference.py); a model dir with code/inference.py is script mode anyway")
    p.add_argument("--source-dir", help="script mode: serve this folder as the model's code/ (as the SDK repacks it)")


def add_parser(subparsers):
    p = subparsers.add_parser("predict", help="send images to an endpoint and print the top labels")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--endpoint", default="http://127.0.0.1:8080", help="server root URL")
    p.add_argument("--model", help="TorchServe model name (/predictions/<model>); default /invocations")
    p.add_argument("--topk", type=int, default=serving_defaults().TOPK, help="labels per image (default %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0)
    add_predict_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("package", help="make a TorchServe .mar from a job's model dir")
    p.add_argument("job", help="job name (jobs/<name>/model), a model dir or a model.tar.gz")
    p.add_argument("--export-path", default="model-store")
    p.add_argument("--name", help="model name (default: the job name)")
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs")
    _add_script_arguments(p)
    p.set_defaults(func=cmd_package)

    p = subparsers.add_parser("serve", help="TorchServe on 127.0.0.1 with a job's model (foreground)")
    p.add_argument("job", help="job name (jobs/<name>/model), a model dir, a model.tar.gz, or a registered model: "
                               "models:/NAME/VERSION or models:/NAME@alias")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", help="model name (default: the job name)")
    p.add_argument("--jobs-dir", help="default $LOCALSAGE_JOBS_DIR or jobs")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="environment variable for the model's workers (repeatable), e.g. "
                        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for a whole pickled model you trust")
    _add_script_arguments(p)
    p.set_defaults(func=cmd_serve)
