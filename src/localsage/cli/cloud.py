"""`localsage push | upload-data | deploy | endpoint`, the SageMaker options of `train`, and
`train --backend sagemaker` (validate, dry-run or confirm, then run through the runner)."""
from __future__ import annotations

import os

from .common import cloud_guard, parse_hp, print_table

# cheap to import (standard library only): the parser needs its constants
from ..cloud import DEFAULT_INSTANCE_TYPE, DEFAULT_REPOSITORY, ROLE_ENV, SERVING_ENV


def add_train_arguments(p) -> None:
    g = p.add_argument_group("SageMaker (--backend sagemaker; --data is then an s3:// URI)")
    g.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    g.add_argument("--spot", action="store_true", help="managed spot training (checkpoints to S3, resumes)")
    g.add_argument("--max-run", type=int, default=4 * 3600, help="seconds of training before SageMaker stops the job")
    g.add_argument("--max-wait", type=int, help="spot: seconds including waits for capacity (default 2 x max-run)")
    g.add_argument("--volume-size", type=int, default=30, help="GB of EBS per instance")
    g.add_argument("--no-debug-tensors", dest="debug_tensors", action="store_false",
                   help="do not save Debugger tensors to S3")
    g.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    g.add_argument("--output-path", help="s3://bucket/prefix for artifacts (default s3://<data bucket>/localsage/jobs)")
    g.add_argument("--region", help="AWS region (default: the AWS configuration)")
    g.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request and exit")
    g.add_argument("--yes", action="store_true", help="start the billable job without asking")


def add_predict_arguments(p) -> None:
    p.add_argument("--endpoint-name", help="a SageMaker endpoint (instead of --endpoint URL)")
    p.add_argument("--region", help="AWS region of --endpoint-name")


def training_options(args):
    from .. import cloud

    return cloud.TrainingOptions(output_path=args.output_path or cloud.default_output_path(args.data), role=args.role,
                                 image=args.image, instance_type=args.instance_type, region=args.region,
                                 spot=args.spot, max_run=args.max_run, max_wait=args.max_wait,
                                 volume_size=args.volume_size, debug_tensors=args.debug_tensors)


@cloud_guard
def train_on_sagemaker(args) -> int:
    from .. import cloud, hyperparameters, runner

    hps = hyperparameters.to_strings(parse_hp(args.hp, args.hp_file))
    hyperparameters.parse(hps)  # bad values fail here, not after an instance was billed
    opts = training_options(args)
    name = cloud.check_job_name(args.name or runner.job_name())
    if args.dry_run:
        cloud.print_requests([cloud.training_request(args.data, hps, opts, name, args.instance_count)])
        return 0
    cloud.aws_session(opts.region)
    cloud.require_role(opts.role)
    cloud.confirm(cloud.training_summary(args.data, opts, args.instance_count), args.yes)
    record = runner.train(args.data, hps, backend="sagemaker", name=name, jobs_dir=args.jobs_dir,
                          image=opts.image, instance_count=args.instance_count, backend_options=opts.to_dict())
    return 0 if record["TrainingJobStatus"] == "Completed" else 1


def cmd_deploy(args) -> int:
    from .. import cloud

    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": args.workers, "SAGEMAKER_TS_BATCH_SIZE": args.batch_size,
           "SAGEMAKER_TS_MAX_BATCH_DELAY": args.max_batch_delay, "SAGEMAKER_MODEL_SERVER_TIMEOUT": args.timeout}
    name = cloud.endpoint_name(args.model, args.endpoint_name)

    def options():
        data = cloud.model_data(args.model, args.jobs_dir, args.output_path, args.region, dry_run=args.dry_run)
        return cloud.DeployOptions(model_data=data, endpoint_name=name, role=args.role, image=args.image,
                                   instance_type=args.instance_type, instance_count=args.instance_count,
                                   region=args.region, env={k: v for k, v in env.items() if v is not None})

    if args.dry_run:
        cloud.print_requests(cloud.deploy_requests(options()))
        return 0
    cloud.aws_session(args.region)
    cloud.require_role(args.role)
    cloud.confirm([f"This creates a SageMaker real-time endpoint {name}: {args.instance_count} x {args.instance_type}, "
                   f"model {args.model}",
                   f"  billed per instance-hour until you run: localsage endpoint delete {name}"], args.yes)
    opts = options()
    print(f"creating endpoint {name} from {opts.model_data} (this takes several minutes)...", flush=True)
    cloud.deploy(opts, wait=not args.no_wait)
    print(f"endpoint {name} {'is being created' if args.no_wait else 'is InService'}\n"
          f"  predict: localsage predict --endpoint-name {name} dog.jpg\n"
          f"  delete:  localsage endpoint delete {name}")
    return 0


def cmd_push(args) -> int:
    from .. import cloud

    for ref in cloud.push(args.image, args.repository, args.tag or ["latest"], args.region):
        print(f"pushed {ref}")
    return 0


def cmd_upload_data(args) -> int:
    from .. import cloud

    count = cloud.upload_data(args.dir, args.s3_uri, args.region)
    print(f"{count} files in {args.s3_uri.rstrip('/')}/ ; train with: localsage train --backend sagemaker --data {args.s3_uri}")
    return 0


def cmd_endpoint(args) -> int:
    from .. import cloud

    if args.action == "list":
        rows = cloud.list_endpoints(args.region)
        if not rows:
            print("no endpoints")
            return 0
        print_table([(r["name"], r["status"], r["instance_type"], r["instance_count"], r["created"]) for r in rows],
                    ("NAME", "STATUS", "INSTANCE TYPE", "COUNT", "CREATED"))
        print("endpoints are billed per instance-hour while they exist: localsage endpoint delete NAME")
        return 0
    if not args.name:
        raise cloud.CloudError("endpoint delete needs an endpoint name (localsage endpoint list shows them)")
    cloud.delete_endpoint(args.name, args.region, keep_model=args.keep_model)
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
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--image", help="ECR image URI (default <account>.dkr.ecr.<region>.amazonaws.com/localsage:latest)")
    p.add_argument("--role", help=f"SageMaker execution role ARN or name (default ${ROLE_ENV})")
    p.add_argument("--output-path", help="s3://bucket/prefix to upload a locally trained job's model.tar.gz to")
    p.add_argument("--workers", help="SAGEMAKER_MODEL_SERVER_WORKERS (default %s)" % SERVING_ENV["SAGEMAKER_MODEL_SERVER_WORKERS"])
    p.add_argument("--batch-size", help="SAGEMAKER_TS_BATCH_SIZE (default %s)" % SERVING_ENV["SAGEMAKER_TS_BATCH_SIZE"])
    p.add_argument("--max-batch-delay", help="SAGEMAKER_TS_MAX_BATCH_DELAY in ms (default %s)" % SERVING_ENV["SAGEMAKER_TS_MAX_BATCH_DELAY"])
    p.add_argument("--timeout", help="SAGEMAKER_MODEL_SERVER_TIMEOUT in s (default %s)" % SERVING_ENV["SAGEMAKER_MODEL_SERVER_TIMEOUT"])
    p.add_argument("--jobs-dir")
    p.add_argument("--region")
    p.add_argument("--no-wait", action="store_true", help="return once creation started")
    p.add_argument("--dry-run", action="store_true", help="print the CreateModel/EndpointConfig/Endpoint requests and exit")
    p.add_argument("--yes", action="store_true", help="create the billable endpoint without asking")
    p.set_defaults(func=cloud_guard(cmd_deploy))

    p = subparsers.add_parser("endpoint", help="list or delete SageMaker endpoints")
    p.add_argument("action", choices=("list", "delete"))
    p.add_argument("name", nargs="?")
    p.add_argument("--keep-model", action="store_true", help="delete: keep the SageMaker model")
    p.add_argument("--region")
    p.set_defaults(func=cloud_guard(cmd_endpoint))
