"""localsage's SageMaker API on loopback (`localsage api`): the SDKs' and boto3's cloud calls, unchanged, run as
local jobs, studies and endpoints. server.py routes one port; context.py is what every operation receives;
training, tuning, endpoints, runtime and transform answer the SageMaker calls; moto answers S3, STS, IAM and
CloudWatch Logs in the same process, with S3 mirrored to disk."""
