"""Real SageMaker for the same image: ECR push, S3 upload, training jobs, endpoints.

Everything goes through the AWS SDKs (boto3, the sagemaker SDK v2, the docker SDK). Before anything
is created the caller's region and credentials are checked, so a missing one is a clear error and
nothing half-made is left behind; `--dry-run` renders the exact requests without credentials.

    constants  the cloud facts (instance type, role variable, limits, SDK config, serving env)
    session    credentials and region, role, the SDK session (telemetry off), confirm, dry runs
    s3         URIs, default output path, data upload
    ecr        repository, login, push
    source     script mode's code: sourcedir.tar.gz for training, model.tar.gz + code/ for deploy
    training   TrainingOptions, the Estimator, CreateTrainingJob (dry run or started)
    endpoints  DeployOptions, the model, deploy / list / delete, the predict client

Importing any of these modules is cheap (the standard library and each other): boto3, the SDK and
docker are imported by the functions that use them, so the command-line parser reading `constants`
loads none of them.
"""
