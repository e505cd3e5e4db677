"""Run the user's program the way SageMaker's PyTorch training container does.

Facts (sagemaker-training-toolkit: trainer.py, process.py, errors.py, runner.py;
sagemaker-pytorch-training-toolkit: training.py, torch_distributed.py):
- `.sh` -> `/bin/sh -c "./prog ARGS"`; a code dir with setup.py -> `python -m module ARGS`;
  `.py` -> `python prog ARGS`; the working directory is the code dir, which leads PYTHONPATH;
- torch_distributed (`sagemaker_torch_distributed_enabled`) -> `torchrun --nnodes H
  --nproc_per_node G`, plus `--master_addr <first host> --master_port 7777 --node_rank i` only
  when H > 1; G = GPUs of the host, else 1; `sagemaker_mpi_num_of_processes_per_host` overrides G;
- exit 0 -> empty output/success; otherwise output/failure (never overwritten when it exists):
  `ExecuteUserScriptError:\nExitCode N\nErrorMessage "..."\nCommand "..."` (137 adds
  OutOfMemory) and exit code 1. A known failure (serve/script_errors.py: a whole pickled model that
  torch >= 2.6's torch.load refuses) leads ErrorMessage with its clear reason.

localsage's additions: SIGTERM/SIGINT go to the program's whole process group (SIGKILL after
the grace period); a default debughookconfig.json is written when none exists, so an unmodified
`smd.Hook.create_from_json_file()` works (LOCALSAGE_DEBUG_HOOK=off turns that off).
"""
from __future__ import annotations

import collections
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from localsage.container.scriptmode import code as code_mod, env as env_mod
from localsage.core import contract, procs
from localsage.core.hyperparameters import TORCH_DISTRIBUTED_KEY, processes_per_host
from localsage.core.serve_dir import serve_module

MASTER_PORT = 7777
GRACE_SECONDS = float(os.environ.get("LOCALSAGE_SCRIPT_GRACE_SECONDS", 25))  # < the backends' 30 s
FAILED_EXIT = 1
ERROR_TYPE = "ExecuteUserScriptError"
MESSAGE_LIMIT = 1000
RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")


def log(message: str) -> None:
    print(f"localsage script mode: {message}", flush=True)


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def command(tenv, code: Path) -> list[str]:
    program, args = tenv.program, tenv.user_args()
    package = (code / code_mod.SETUP).exists()
    if program.endswith(".sh") or not (package or program.endswith(".py")):
        path = code / program
        try:
            path.chmod(path.stat().st_mode | 0o111)
        except OSError:
            return ["/bin/sh", "-c", " ".join(["/bin/sh", shlex.quote(program), *map(shlex.quote, args)])]
        return ["/bin/sh", "-c", " ".join([f"./{program}", *map(shlex.quote, args)])]
    if package:
        return [sys.executable, "-m", tenv.module_name, *args]
    if tenv.framework_params.get(TORCH_DISTRIBUTED_KEY) is True:
        per_host = processes_per_host(tenv.framework_params, tenv.num_gpus)
        cmd = [*torchrun(), "--nnodes", str(len(tenv.hosts)), "--nproc_per_node", str(per_host)]
        if len(tenv.hosts) > 1:
            cmd += ["--master_addr", tenv.hosts[0], "--master_port", str(MASTER_PORT),
                    "--node_rank", str(tenv.hosts.index(tenv.current_host))]
        return [*cmd, program, *args]
    return [sys.executable, program, *args]


def distribution_env(tenv) -> dict:
    if len(tenv.hosts) < 2 and tenv.framework_params.get(TORCH_DISTRIBUTED_KEY) is not True:
        return {}
    return {"MASTER_ADDR": tenv.hosts[0], "MASTER_PORT": str(MASTER_PORT),
            "NCCL_SOCKET_IFNAME": tenv.network_interface_name, "NCCL_IB_DISABLE": "1", "NCCL_DEBUG": "WARN"}


def wait_for_hosts(hosts, timeout_s=900) -> None:
    """Every host resolves before a multi-host job starts (the toolkit waits up to 15 minutes)."""
    deadline = time.time() + timeout_s
    for host in hosts:
        while True:
            try:
                socket.gethostbyname(host)
                break
            except OSError:
                if time.time() > deadline:
                    raise code_mod.CodeError(f"host {host} does not resolve after {timeout_s:.0f}s")
                time.sleep(1)


def write_debughookconfig(tenv, environ) -> str | None:
    """The path of the hook config smdebug should read (None: debugging is off)."""
    params = contract.debug_hook_parameters(environ)
    if params is None:
        return None
    if environ.get(contract.SMDEBUG_CONFIG_ENV):
        return environ[contract.SMDEBUG_CONFIG_ENV]
    path = contract.debughookconfig_file(tenv.root)
    if path.exists():
        return str(path)
    config = contract.default_debughookconfig(contract.tensors_dir(tenv.root), params)
    try:
        path.write_text(json.dumps(config, indent=2))
    except OSError:  # a read-only config mount: a file of our own, pointed at by smdebug's variable
        fd, name = tempfile.mkstemp(prefix="debughookconfig-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        path = Path(name)
    return str(path)


def child_env(tenv, code: Path, target: str | None, hook_file: str | None, environ) -> dict:
    env = dict(environ)
    env.update(tenv.env_vars())
    env.update(distribution_env(tenv))
    paths = [str(code)] + ([target] if target else []) + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    if hook_file:
        env[contract.SMDEBUG_CONFIG_ENV] = hook_file
    return env


class Tee(threading.Thread):
    """Copies the program's stderr to ours and keeps the last lines for the failure reason."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, collections.deque(maxlen=400)

    def run(self):
        for line in iter(self.stream.readline, ""):
            sys.stderr.write(line)
            sys.stderr.flush()
            self.lines.append(line.rstrip("\n"))


def known_reason(text: str) -> str | None:
    """serve/script_errors.py's clear reason for a known failure in the program's stderr (a whole pickled
    model torch.load refuses), else None; None too where serve/ is not at hand."""
    try:
        return serve_module("script_errors.py").explain(text, serving=False)
    except (OSError, ImportError):
        return None


def error_message(lines) -> str:
    """The last Python traceback the program printed (not torchrun's own), else the last stderr lines;
    led by the clear reason when the failure is a known one."""
    lines = [RANK_PREFIX.sub("", line) for line in lines]  # torchrun's "[rank0]: " before a worker's lines
    known = known_reason("\n".join(lines))
    blocks, start = [], None
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            start = i
        elif start is not None and line and not line[0].isspace():
            blocks.append(lines[start:i + 1])
            start = None
    blocks = [b for b in blocks if "torch.distributed.elastic" not in b[-1]] or blocks
    text = "\n".join(blocks[-1] if blocks else [x for x in lines if x.strip()][-10:])
    text = text if len(text) <= MESSAGE_LIMIT else "..." + text[-MESSAGE_LIMIT:]
    return f"{known}\n{text}" if known else text  # first: SageMaker shows the failure file's first 1,024 characters


def failure_text(exit_code: int, message: str, cmd) -> str:
    if exit_code == 137:
        message = ("OutOfMemory: Process killed by SIGKILL (signal 9)\n" + message).strip()
    return f'{ERROR_TYPE}:\nExitCode {exit_code}\nErrorMessage "{message}"\nCommand "{" ".join(map(str, cmd))}"'


def write_failure(root, text: str) -> None:
    path = contract.failure_file(root)
    if not path.exists():  # the program's own reason wins
        contract.write_failure(path, text)


class Forwarder:
    """SIGTERM/SIGINT -> the program's process group; SIGKILL after the grace period."""

    def __init__(self):
        self.proc, self.signalled = None, None

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.signalled is None:
            self.signalled = signum
            log(f"received signal {signum}: forwarding SIGTERM to the program, SIGKILL after {GRACE_SECONDS:.0f}s")
            threading.Thread(target=self._kill_later, daemon=True).start()
        self._send(signal.SIGTERM)

    def _send(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_later(self):
        deadline = time.time() + GRACE_SECONDS
        while time.time() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return
            time.sleep(0.2)
        self._send(signal.SIGKILL)


def start_sampler(root):
    """The system profiler (CPU/memory/GPU every 0.5 s into output/profiler) around the program;
    LOCALSAGE_PROFILER=off turns it off. Never a reason for the job to fail."""
    if os.environ.get("LOCALSAGE_PROFILER", "").lower() in ("off", "false", "0"):
        return None
    try:
        from localsage.container import debug_sampler as sampler_mod

        profiler_dir = contract.profiler_dir(root)
        sampler = sampler_mod.SystemSampler(profiler_dir)
        sampler.start()
        sampler_mod.write_job_info(profiler_dir, start=time.time(), cores=procs.cores(),
                                   gpus=len(sampler.handles))
        return sampler
    except Exception as exc:  # psutil missing, an unwritable output dir
        log(f"system profiler not started: {exc}")
        return None


def stop_sampler(sampler, root):
    if sampler is None:
        return
    try:
        from localsage.container import debug_sampler as sampler_mod

        sampler.stop()
        sampler_mod.write_job_info(contract.profiler_dir(root), end=time.time(),
                                   sampler_cpu_s=round(sampler.cpu_seconds, 4), samples=sampler.samples)
    except Exception as exc:
        log(f"system profiler: {exc}")


def main(root=None, environ=None) -> int:
    environ = dict(os.environ if environ is None else environ)
    forwarder = Forwarder()
    forwarder.install()
    tenv = None
    try:
        tenv = env_mod.load(root, environ)
        if not tenv.program:
            raise code_mod.CodeError("no program: set the sagemaker_program hyperparameter or SAGEMAKER_PROGRAM")
        code = code_mod.prepare(tenv.root, tenv.module_dir, environ)
        if not (code / tenv.program).exists() and not (code / code_mod.SETUP).exists():
            raise code_mod.CodeError(f"the program {tenv.program!r} is not in the code folder {code}")
        target = code_mod.install(code, environ, log)
        hook_file = write_debughookconfig(tenv, environ)
        if len(tenv.hosts) > 1:
            wait_for_hosts(tenv.hosts)
        cmd = command(tenv, code)
        env = child_env(tenv, code, target, hook_file, environ)
    except (code_mod.CodeError, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log(f"failed before the program started: {reason}")
        write_failure(tenv.root if tenv else contract.root_dir(root), reason)
        return FAILED_EXIT
    if forwarder.signalled:
        return 128 + forwarder.signalled
    log(f"running {' '.join(cmd)} in {code}")
    sampler = start_sampler(tenv.root)
    proc = subprocess.Popen(cmd, cwd=code, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            bufsize=1, start_new_session=True)
    forwarder.proc = proc
    if forwarder.signalled:  # a signal that came while the program was starting
        forwarder._send(signal.SIGTERM)
    tee = Tee(proc.stderr)
    tee.start()
    code_ = proc.wait()
    tee.join(timeout=5)
    stop_sampler(sampler, tenv.root)
    exit_code = 128 - code_ if code_ < 0 else code_
    if exit_code == 0:
        contract.success_file(tenv.root).parent.mkdir(parents=True, exist_ok=True)
        contract.success_file(tenv.root).touch()
        return 0
    if forwarder.signalled:
        log(f"the program stopped on SIGTERM (exit {exit_code})")
        return exit_code
    write_failure(tenv.root, failure_text(exit_code, error_message(tee.lines), cmd))
    return FAILED_EXIT
