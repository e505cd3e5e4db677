"""SageMaker's debugger and profiler rules run locally over a job's tensors and profile, and the report.

Used in the container (rules-at-end) and on the host (`localsage debug`, `report`); imports core only."""
