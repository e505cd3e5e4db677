"""`make demo`: the whole SageMaker-style loop on embedded defaults, no AWS, no GPU, no data of your own.

demo data -> a small tuning study (pruning on) -> train the best hyperparameters -> debugger and
profiler rules + HTML report -> TorchServe with the model -> real HTTP predictions on held-out
images, printed next to the true labels -> server stopped. A second run reuses what it can: the
data, the study (already at its budget), and the final job when its hyperparameters are unchanged.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from localsage.core import procs
from localsage.host import records, runner, tracking
from localsage.host.jobplan import JobPlan

# The demo recipe: resnet18 from scratch at 64 px reaches >= 0.9 on the demo set in a few epochs.
FIXED = {"arch": "resnet18", "weights": "none", "image-size": 64, "epochs": 6, "workers": 1, "seed": 0}
SPACE = {
    "lr": {"type": "float", "min": 1e-3, "max": 1e-2, "scale": "log"},
    "batch-size": {"type": "categorical", "values": [16, 32]},
}
TRIAL_EPOCHS = 4
TRIALS = 4
FINAL_JOB = "demo-best"
MODEL_NAME = "demo"


def stage(n: int, text: str):
    print(f"\n== [{n}/6] {text}", flush=True)


def final_job(data_dir: Path, hp: dict, jobs_dir: Path, backend: str, image=None) -> dict:
    job_dir = jobs_dir / FINAL_JOB
    wanted = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in hp.items()}
    if (job_dir / records.RECORD).exists():
        record = records.read_record(job_dir)
        if record["TrainingJobStatus"] == "Completed" and record["HyperParameters"] == wanted:
            print(f"reusing {job_dir} (same hyperparameters, Completed)")
            return record
        import shutil

        shutil.rmtree(job_dir)
    return runner.train(data_dir, JobPlan(hyperparameters=hp, image=image), backend=backend, name=FINAL_JOB,
                        jobs_dir=jobs_dir)


def run(data_dir="data/demo", jobs_dir="jobs", backend="process", image=None, trials=TRIALS, parallel=1,
        samples=6) -> int:
    from localsage.container.data import class_name
    from localsage.debugger import report as report_mod
    from localsage.debugger.rules.verdicts import run_rules
    from localsage.host import torchserve
    from localsage.host.tune.settings import build as build_tuning
    from localsage.host.tune.workers import run as run_study

    t0 = time.time()
    data_dir, jobs_dir = Path(data_dir), Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)

    stage(1, f"demo data in {data_dir}")
    if (data_dir / "train").is_dir():
        print("reusing the existing demo data")
    else:
        from localsage.container.demo_images import make_demo_data

        make_demo_data(data_dir)
        print(f"wrote {sum(1 for _ in data_dir.rglob('*.jpg'))} images")

    stage(2, f"tuning study 'demo': {trials} trials, pruning on ({backend} backend)")
    t = build_tuning({"space": SPACE, "fixed": {**FIXED, "epochs": TRIAL_EPOCHS}},
                     {"data": str(data_dir), "study": "demo", "trials": trials, "parallel": parallel,
                      "backend": backend, "image": image, "pruner": "median", "prune_startup_trials": 1,
                      "prune_warmup_steps": 2}, jobs_dir=jobs_dir)
    result = run_study(t, resume=(t.study_dir).exists(), echo=False)
    if "best_params" not in result:
        print("no trial completed; see the trials table above", file=sys.stderr)
        return 1
    best = {**FIXED, **result["best_params"]}
    print(f"study folder: {result['folder']}")

    stage(3, f"training the best hyperparameters: {json.dumps(result['best_params'])}")
    record = final_job(data_dir, best, jobs_dir, backend, image)
    if record["TrainingJobStatus"] != "Completed":
        print(f"final job {record['TrainingJobStatus']}: {record.get('FailureReason')}", file=sys.stderr)
        return 1
    summary = record["Summary"] or {}
    job_dir = Path(record["JobDir"])
    print(f"job {FINAL_JOB}: best valid_acc={summary.get('best_valid_acc'):.3f} test_acc={summary.get('test_acc'):.3f} "
          f"-> {job_dir}")

    stage(4, "debugger and profiler rules, HTML report")
    verdicts = run_rules(job_dir)
    fired = [v["rule"] for v in verdicts if v.get("triggered")]
    print(f"{len(verdicts)} rules evaluated; fired: {', '.join(fired) or 'none'}")
    report = report_mod.build(job_dir)
    print(f"report: {report}")
    tracking.attach(job_dir, [(job_dir / "output" / "rules", "rules"), (report, "report")])  # the job's MLflow run

    stage(5, "TorchServe with the model (127.0.0.1, loopback only)")
    port = procs.free_port()
    server = torchserve.LocalServer({MODEL_NAME: job_dir / "model"}, port=port,
                                 log_path=jobs_dir / "demo-torchserve.log")
    server.start()
    try:
        stage(6, f"predictions over HTTP from {server.url}/predictions/{MODEL_NAME}")
        paths = []
        for folder in sorted((data_dir / "test").iterdir()):
            paths.extend(sorted(folder.glob("*.jpg"))[: max(1, samples // 6)])
        results = torchserve.predict(server.url, paths, model=MODEL_NAME, topk=3)
    finally:
        server.stop()
    correct = 0
    print(f"{'IMAGE':42} {'TRUE':16} {'PREDICTED':16} PROBABILITY")
    for path, status, doc in results:
        truth = class_name(Path(path).parent.name)
        if status != 200:
            print(f"{Path(path).name:42} {truth:16} HTTP {status}: {doc}")
            continue
        top = doc["predictions"][0]
        correct += top["label"] == truth
        print(f"{Path(path).name:42} {truth:16} {top['label']:16} {top['probability']:.3f}")
    ok = sum(1 for _, status, _ in results if status == 200)
    print(f"\n{ok}/{len(results)} predictions came back over HTTP, {correct} correct; "
          f"test accuracy of the job {summary.get('test_acc'):.3f}; demo took {time.time() - t0:.0f}s")
    if tracking.tracking_uri(jobs_dir) and not os.environ.get(tracking.URI_ENV):
        print(f"every job and trial is an MLflow run: localsage ui --jobs-dir {jobs_dir}  (or make ui)")
    return 0 if ok == len(results) and results else 1
