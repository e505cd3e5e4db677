"""Host side: what runs jobs and serves models from outside the container — the runner and the job plan,
records, backends, tuning, local TorchServe, experiment tracking, the cloud (real SageMaker) and the demo."""
