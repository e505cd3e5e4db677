"""SDK overhead: seconds a job spends outside the user's script, SageMaker SDK v3 and v2 local mode vs localsage.

    .venv/bin/python bench/sdk_overhead.py [--runs 5] [--image localsage:latest] [--out runs.json]

The same tiny script (bench/script_overhead.py's: imports torch, one small matmul loop) runs on the same image as
- sdk-v3:    ModelTrainer(training_mode=Mode.LOCAL_CONTAINER, source_code=SourceCode(...)).train(), the client
             tests/clients/v3_model_trainer.py run by .venv-sdk3's python,
- localsage: `localsage train --entry-point train.py --backend docker`,
- sdk-v2:    sagemaker.pytorch.PyTorch(instance_type="local", image_uri=...).fit(), the client
             tests/clients/v2_pytorch_estimator.py run by this (localsage's) python,
in turn (v3, localsage, v2, v3, ...) so a changing machine load hits all alike; run 0 warms caches and is not
counted. The script writes its own start (before `import torch`) and end times into SM_MODEL_DIR/times.json;
"outside" = wall time of the whole client process - the script's own time. Both SDK clients run offline: dummy
credentials, AWS config files at /dev/null, telemetry off through the SDK's defaults file, a HOME of their own.
The stopped compose containers each SDK run leaves are removed after it (outside its timing). Prints every run,
then per way the median [min-max] of wall and outside time and the outside time as a ratio to localsage's in the
same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from script_overhead import SCRIPT, localsage, timing_row  # bench/script_overhead.py
from spread import spread, spread_text  # bench/spread.py

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "clients"
SDK3_PYTHON = Path(os.environ.get("LOCALSAGE_SDK3_PYTHON", ROOT / ".venv-sdk3" / "bin" / "python"))
WAYS = ("sdk-v3", "localsage", "sdk-v2")
BASE = "localsage"
COMPOSE_DIR = "com.docker.compose.project.working_dir"


def sdk_env(home: Path) -> dict:
    """The offline environment a user sets for either SDK (as tests/test_sdk_v3.py's sdk3 fixture)."""
    home.mkdir(parents=True, exist_ok=True)
    defaults = home / "sagemaker-config.yaml"  # YAML; JSON is YAML
    defaults.write_text(json.dumps({"SchemaVersion": "1.0",
                                    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "PYTHON"))}
    env.update(HOME=str(home), AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               SAGEMAKER_USER_CONFIG_OVERRIDE=str(defaults), SAGEMAKER_VALIDATE_ROLE="false",
               SAGEMAKER_SUPPRESS_V2_WARNING="1")
    return env


def remove_compose_leftovers(root: Path) -> list:
    """Remove the containers whose compose project lives under `root` (the SDKs leave them stopped)."""
    listed = subprocess.run(["docker", "ps", "-a", "--format", "{{.ID}} {{.Label \"%s\"}}" % COMPOSE_DIR],
                            capture_output=True, text=True, check=True).stdout
    ids = [cid for cid, _, where in (line.partition(" ") for line in listed.splitlines())
           if where == str(root) or where.startswith(f"{root}/")]
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
    return ids


def sdk_client(way: str, env: dict, work: Path, src: Path, data: Path, image: str, i: int) -> tuple[float, dict]:
    """(wall seconds of the whole client process, the script's times.json)."""
    root = work / f"{way}-{i}"
    root.mkdir(parents=True)  # ModelTrainer's local_container_root must exist beforehand
    python, client = (SDK3_PYTHON, "v3_model_trainer.py") if way == "sdk-v3" else (sys.executable,
                                                                                     "v2_pytorch_estimator.py")
    cmd = [str(python), str(CLIENTS / client), "--image", image, "--data", str(data), "--root", str(root),
           "--source-dir", str(src), "--entry", "train.py", "--hp", "epochs=1"]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    wall = time.time() - t0
    remove_compose_leftovers(root)
    if proc.returncode:
        sys.exit(f"{way} run {i} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
    archive = (root / "compressed_artifacts" / "model.tar.gz" if way == "sdk-v3"
               else next((root / "out").rglob("model.tar.gz")))
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "times.json")
        times = json.load(tar.extractfile(member))
    shutil.rmtree(root, ignore_errors=True)
    return wall, times


def run_localsage(work: Path, src: Path, data: Path, image: str, i: int) -> tuple[float, dict]:
    wall, model = localsage(work, src, data, "docker", image, i)
    return wall, json.loads((model / "times.json").read_text())


def table(rows: list, ways) -> str:
    base = {r["run"]: r["outside_s"] for r in rows if r["way"] == BASE}
    lines = [f"{'way':<10} {'wall s':>22} {'outside script s':>22} {'outside / localsage':>24}"]
    for way in ways:
        mine = [r for r in rows if r["way"] == way]
        ratios = [r["outside_s"] / base[r["run"]] for r in mine]
        lines.append(f"{way:<10} {spread_text(r['wall_s'] for r in mine):>22} "
                     f"{spread_text(r['outside_s'] for r in mine):>22} "
                     f"{spread_text(ratios, '{:.2f}x'):>24}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default=os.environ.get("IMAGE", "localsage:latest"))
    ap.add_argument("--out", type=Path, help="write all runs and the summary here as JSON")
    args = ap.parse_args()
    if not SDK3_PYTHON.exists():
        sys.exit(f"no SDK v3 client venv at {SDK3_PYTHON} (make install creates it)")
    work = Path(tempfile.mkdtemp(prefix="sdk-overhead-"))
    src = work / "src"
    src.mkdir()
    (src / "train.py").write_text(SCRIPT)
    data = work / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "note.txt").write_text("a channel with one file\n")
    env = sdk_env(work / "home")
    rows = []
    try:
        for i in range(args.runs + 1):  # run 0 warms caches (page cache, imports, image layers); not counted
            for way in WAYS:
                wall, t = (run_localsage(work, src, data, args.image, i) if way == BASE
                           else sdk_client(way, env, work, src, data, args.image, i))
                row = timing_row("way", way, i, wall, t)
                print(json.dumps(row) + ("  (warm-up)" if i == 0 else ""), flush=True)
                if i:
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {way: {k: spread(r[k] for r in rows if r["way"] == way) for k in ("wall_s", "script_s", "outside_s")}
               for way in WAYS}
    print(f"\n{args.runs} runs each, interleaved, {os.cpu_count()} cores, image {args.image}: median [min-max]")
    print(table(rows, WAYS))
    if args.out:
        args.out.write_text(json.dumps({"runs": rows, "summary": summary, "image": args.image,
                                        "cores": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
