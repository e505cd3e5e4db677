"""`localsage push | upload-data | deploy | endpoint`, the SageMaker options of `train`, and
`train --backend sagemaker` (validate, dry-run or confirm, then run through the runner).

Script mode's `--entry-point`, `--source-dir`, `--metric-definition` and `--distribution` of `train` are defined with
the other `train` flags (cli/jobs.py); they are read here with getattr, so `train` works without them."""
from __future__ import annotations

import dataclasses
import os

from localsage.cli.common import at_least_one, cloud_guard, pairs, parse_hp, print_table

# cheap to import (standard library only): the parser needs its constants
from localsage.host.cloud.constants import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_MAX_RUN,
    DEFAULT_REPOSITORY,
    DEFAULT_VOLUME_SIZE,
    ROLE_ENV,
    SERVING_DEFAULTS,
    SERVING_ENV_VARS,
)


def add_train_arguments(p) -> None:
    g = p.add_argument_group("SageMaker (--backend sagemaker; --data is then an s3:// URI)")
    g.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    g.add_argument("--spot", action="store_true", help="managed spot training (checkpoints to S3, resumes)")
    g.add_argument("--max-run", type=int, default=DEFAULT_MAX_RUN,
                   help="seconds of training before SageMaker stops the job")
    g.add_argument("--max-wait", type=int, help="spot: seconds including waits for capacity (default 2 x max-run)")
    g.add_argument("--volume-size", type=int, default=DEFAULT_VOLUME_SIZE, help="GB of EBS per instance")
    g.add_argument("--no-debug-tensors", dest="debug_tensors", action="store_false",
                   help="save no Debugger tensors (the built-in trainer: debug=false, locally too)")
    g.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    g.add_argument("--output-path", help="s3://bucket/prefix for artifacts (default s3://<data bucket>/localsage/jobs)")
    g.add_argument("--region", help="AWS region (default: the AWS configuration)")
    g.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request and exit")
    g.add_argument("--yes", action="store_true", help="start the billable job without asking")


def add_predict_arguments(p) -> None:
    p.add_argument("--endpoint-name", help="a SageMaker endpoint (instead of --endpoint URL)")
    p.add_argument("--region", help="AWS region of --endpoint-name")


def training_options(args):
    from localsage.host.cloud import s3, training

    return training.TrainingOptions(output_path=args.output_path or s3.default_output_path(args.data),
                                    role=args.role, image=args.image, instance_type=args.instance_type,
                                    region=args.region, spot=args.spot, max_run=args.max_run, max_wait=args.max_wait,
                                    volume_size=args.volume_size, debug_tensors=args.debug_tensors,
                                    entry_point=getattr(args, "entry_point", None),
                                    source_dir=getattr(args, "source_dir", None),
                                    metric_definitions=getattr(args, "metric_definition", None) or None,
                                    hook_parameters=pairs(getattr(args, "debugger_hook_config", None),
                                                          "--debugger-hook-config") or None,
                                    distribution=None if getattr(args, "distribution", None) in (None, "", "none")
                                    else args.distribution)


@cloud_guard
def train_on_sagemaker(args) -> int:
    from localsage.host import records, runner
    from localsage.host.cloud import session, training
    from localsage.host.jobplan import JobPlan

    hps = parse_hp(args.hp, args.hp_file)
    opts = training_options(args)
    if getattr(args, "inference_entry_point", None):
        raise session.CloudError("--inference-entry-point copies a local job's inference script into its model; "
                                 "for SageMaker give it to `localsage deploy --entry-point` (it repacks the model)")
    try:  # the built-in trainer: bad values fail here, not after an instance was billed
        plan = plan_for_cloud(args, hps, opts)
    except ValueError as exc:
        raise session.CloudError(str(exc)) from None
    hps = plan.hyperparameters
    if not plan.tensors_on:  # no DebuggerHookConfig for a hook the trainer will not set up
        opts = dataclasses.replace(opts, debug_tensors=False)
    training.check_options(opts)
    env = pairs(getattr(args, "env", None), "--env")
    name = session.check_job_name(args.name or records.job_name())
    if args.dry_run:
        session.print_requests(training.training_requests(args.data, hps, opts, name, args.instance_count, env))
        return 0
    session.aws_session(opts.region)
    session.require_role(opts.role)
    session.confirm(training.training_summary(args.data, opts, args.instance_count), args.yes)
    # the sagemaker backend sends the request's hyperparameters as they are (training.training_requests)
    plan = JobPlan(hyperparameters=hps, env=env, image=opts.image)
    record = runner.train(args.data, plan, backend="sagemaker", name=name, jobs_dir=args.jobs_dir,
                          instance_count=args.instance_count, backend_options=opts.to_dict())
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def plan_for_cloud(args, hps: dict, opts):
    """The job plan's checks for SageMaker (bad values fail before an instance is billed): the built-in
    trainer's hyperparameters as strings; a script's own values, which training.training_requests encodes
    (training.check_options checks its hook settings). Both carry the toolkit's processes-per-host key."""
    from localsage.core import hyperparameters
    from localsage.host.jobplan import JobPlan

    per_host = getattr(args, "processes_per_host", None)
    checks = {"debug": opts.debug_tensors, "debugger_hook_config": opts.hook_parameters}
    if opts.entry_point:
        plan = JobPlan.for_script(opts.entry_point, source_dir=opts.source_dir, hyperparameters=hps)  # checks: its own
        if per_host is not None:
            plan = plan.but(hyperparameters={**plan.hyperparameters, hyperparameters.PROCESSES_PER_HOST_KEY: per_host})
        return plan
    return JobPlan(hyperparameters=hps, processes_per_host=per_host, **checks).check()


def deploy_options(args, name):
    """DeployOptions and the local model.tar.gz to upload first (None when it is on S3 or repacked)."""
    from localsage.host import records
    from localsage.host.cloud import endpoints, s3, session, source

    record = None if args.model.startswith("s3://") else records.describe(args.model, args.jobs_dir)
    data, local = endpoints.model_data(args.model, record, args.output_path)
    repack = None
    if args.entry_point:  # a user's inference script: model.tar.gz + code/, as PyTorchModel repacks it
        code_location = args.output_path or "s3://" + s3.split_s3(data)[0]
        repack = source.repack_plan(local or data, args.entry_point, args.source_dir,
                                    source.repacked_uri(code_location, name))
        data, local = repack.destination, None
    elif args.source_dir:
        raise session.CloudError("--source-dir needs --entry-point (the inference script in it)")
    env = {SERVING_ENV_VARS[k]: getattr(args, k) for k in SERVING_DEFAULTS}
    opts = endpoints.DeployOptions(model_data=data, endpoint_name=name, role=args.role, image=args.image,
                                   instance_type=args.instance_type, instance_count=args.instance_count,
                                   region=args.region, env={k: v for k, v in env.items() if v is not None},
                                   repack=repack)
    return opts, local


def cmd_deploy(args) -> int:
    from localsage.host.cloud import endpoints, session

    name = endpoints.endpoint_name(args.model, args.endpoint_name)
    if args.dry_run:
        opts, _ = deploy_options(args, name)  # nothing is uploaded or repacked
        session.print_requests(endpoints.deploy_requests(opts))
        return 0
    session.aws_session(args.region)
    session.require_role(args.role)
    opts, local = deploy_options(args, name)
    session.confirm([f"This creates a SageMaker real-time endpoint {name}: "
                     f"{args.instance_count} x {args.instance_type}, "
                     f"model {args.model}" + (f" with code/{opts.repack.program}" if opts.repack else ""),
                     f"  billed per instance-hour until you run: localsage endpoint delete {name}"], args.yes)
    if local:
        endpoints.upload_model(local, opts.model_data, args.region)
    print(f"creating endpoint {name} from {opts.model_data} (this takes several minutes)...", flush=True)
    endpoints.deploy(opts, wait=not args.no_wait)
    print(f"endpoint {name} {'is being created' if args.no_wait else 'is InService'}\n"
          f"  predict: localsage predict --endpoint-name {name} dog.jpg\n"
          f"  delete:  localsage endpoint delete {name}")
    return 0


def cmd_push(args) -> int:
    from localsage.host.cloud import ecr

    for ref in ecr.push(args.image, args.repository, args.tag or ["latest"], args.region):
        print(f"pushed {ref}")
    return 0


def cmd_upload_data(args) -> int:
    from localsage.host.cloud import s3

    count = s3.upload_data(args.dir, args.s3_uri, args.region)
    print(f"{count} files in {args.s3_uri.rstrip('/')}/ ; "
          f"train with: localsage train --backend sagemaker --data {args.s3_uri}")
    return 0


def cmd_endpoint(args) -> int:
    from localsage.host.cloud import endpoints, session

    if args.action == "list":
        rows = endpoints.list_endpoints(args.region)
        if not rows:
            print("no endpoints")
            return 0
        print_table([(r["name"], r["status"], r["instance_type"], r["instance_count"], r["created"]) for r in rows],
                    ("NAME", "STATUS", "INSTANCE TYPE", "COUNT", "CREATED"))
        print("endpoints are billed per instance-hour while they exist: localsage endpoint delete NAME")
        return 0
    if not args.name:
        raise session.CloudError("endpoint delete needs an endpoint name (localsage endpoint list shows them)")
    endpoints.delete_endpoint(args.name, args.region, keep_model=args.keep_model)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="push the image to ECR (creates the repository when missing)")
    p.add_argument("--image", default=os.environ.get("IMAGE", "localsage:latest"), help="local image")
    p.add_argument("--repository", default=DEFAULT_REPOSITORY, help="ECR repository name")
    p.add_argument("--tag", action="append", help="tag to push (repeatable; default latest)")
    p.add_argument("--region")
    p.set_defaults(func=cloud_guard(cmd_push))

    p = subparsers.add_parser("upload-data", help="copy a data folder to s3://bucket/prefix")
    p.add_argument("dir")
    p.add_argument("s3_uri")
    p.add_argument("--region")
    p.set_defaults(func=cloud_guard(cmd_upload_data))

    p = subparsers.add_parser("deploy", help="deploy a job's model to a SageMaker real-time endpoint")
    p.add_argument("model", help="job name, or s3://.../model.tar.gz")
    p.add_argument("--backend", default="sagemaker", choices=("sagemaker",))
    p.add_argument("--endpoint-name")
    p.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    p.add_argument("--instance-count", type=at_least_one, default=1)
    p.add_argument("--image", help="ECR image URI (default <account>.dkr.ecr.<region>.amazonaws.com/localsage:latest)")
    p.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    p.add_argument("--output-path", help="s3://bucket/prefix to upload a locally trained job's model.tar.gz "
                   "(and a repacked model) to")
    p.add_argument("--entry-point", help="inference script (model_fn/input_fn/predict_fn/output_fn): model.tar.gz "
                   "is repacked with it under code/ and SAGEMAKER_PROGRAM set, as the SDK's PyTorchModel does")
    p.add_argument("--source-dir", help="folder holding --entry-point (and requirements.txt...): copied whole to code/")
    units = {"max_batch_delay": " in ms", "timeout": " in s"}
    for key, default in SERVING_DEFAULTS.items():  # --workers --batch-size --max-batch-delay --timeout
        p.add_argument("--" + key.replace("_", "-"),
                       help=f"{SERVING_ENV_VARS[key]}{units.get(key, '')} (default {default}; "
                       "a script model: the inference toolkit's)")
    p.add_argument("--jobs-dir")
    p.add_argument("--region")
    p.add_argument("--no-wait", action="store_true", help="return once creation started")
    p.add_argument("--dry-run", action="store_true",
                   help="print the CreateModel/EndpointConfig/Endpoint requests and exit")
    p.add_argument("--yes", action="store_true", help="create the billable endpoint without asking")
    p.set_defaults(func=cloud_guard(cmd_deploy))

    p = subparsers.add_parser("endpoint", help="list or delete SageMaker endpoints")
    p.add_argument("action", choices=("list", "delete"))
    p.add_argument("name", nargs="?")
    p.add_argument("--keep-model", action="store_true", help="delete: keep the SageMaker model")
    p.add_argument("--region")
    p.set_defaults(func=cloud_guard(cmd_endpoint))
