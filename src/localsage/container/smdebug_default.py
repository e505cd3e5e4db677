"""The image's default smdebug hook config, for programs that nobody gave one.

SageMaker course scripts call `smd.Hook.create_from_json_file()` or
`smdebug.pytorch.get_hook(create_if_not_exists=True)` unconditionally. The platform writes
/opt/ml/input/config/debughookconfig.json for a job with a DebuggerHookConfig, and the image's `train`
writes one for script jobs (scriptmode/run.py); SDK v3's ModelTrainer runs `python3 entry_script`
itself (sm_train.sh), so nothing does, and those scripts fail (FileNotFoundError, or get_hook
returns None).

The image carries a default config (IMAGE_CONFIG, generated at build from contract.py: tensors under
/opt/ml/output/tensors, the collections of localsage's script jobs) and a `.pth` file in its venv that
runs `apply` at every interpreter start. smdebug reads SMDEBUG_CONFIG_FILE_PATH before its default
path, so a plain ENV would shadow the platform's file; `choose` points smdebug at the image default
only when the job has no config of its own:
- SMDEBUG_CONFIG_FILE_PATH is unset (or empty);
- LOCALSAGE_DEBUG_HOOK is unset: any value ("off", or the hook parameters of a job localsage started)
  means the job has spoken and the image's `train` writes, or refuses, the config itself;
- the job root is /opt/ml (SAGEMAKER_BASE_DIR unset or /opt/ml: the default names /opt/ml's tensors);
- <root>/input/config/debughookconfig.json does not exist (the platform's file, or `--debugger-hook-config`);
- the image default exists (outside the image this does nothing).
The built-in trainer never reads SMDEBUG_CONFIG_FILE_PATH (debugger/hook.py decides from its `debug`
hyperparameter and contract.debughookconfig), so debug=false stays off.

At start-up this module imports nothing but `os`: the facts it needs from contract.py (variable
names, the /opt/ml root, the job config's path) are written into the `.pth` line at build time by
`install`, so contract.py stays their one place and no interpreter pays for importing it.
"""
from __future__ import annotations

import os

IMAGE_CONFIG = "/etc/localsage/debughookconfig.json"
PTH_NAME = "localsage-smdebug-default.pth"


def facts() -> dict:
    """What `choose` needs to know, from contract.py (called at build time and by tests)."""
    from localsage.core import contract

    root = contract.DEFAULT_ROOT
    return {
        "smdebug_env": contract.SMDEBUG_CONFIG_ENV,
        "hook_env": contract.DEBUG_HOOK_ENV,
        "root_env": contract.ROOT_ENV,
        "root": root,
        "job_config": os.path.relpath(contract.debughookconfig_file(root), root),
        "default": IMAGE_CONFIG,
    }


def choose(environ, known: dict, exists=os.path.exists) -> str | None:
    """The hook config to point SMDEBUG_CONFIG_FILE_PATH at, or None to leave the environment alone."""
    if environ.get(known["smdebug_env"]) or environ.get(known["hook_env"]):
        return None
    root = environ.get(known["root_env"]) or known["root"]
    if os.path.normpath(root) != os.path.normpath(known["root"]):
        return None
    if exists(os.path.join(root, known["job_config"])) or not exists(known["default"]):
        return None
    return known["default"]


def apply(known: dict) -> None:
    """Run by the `.pth` file at interpreter start: never raises (a broken start-up hook must not stop
    every Python program in the image)."""
    try:
        path = choose(os.environ, known)
        if path:
            os.environ[known["smdebug_env"]] = path
    except Exception:  # noqa: BLE001 -- see the docstring
        pass


def pth_line(known: dict) -> str:
    return f"import localsage.container.smdebug_default as m; m.apply({known!r})\n"


def default_config() -> dict:
    """The image default: localsage's default debughookconfig for a container's /opt/ml."""
    from localsage.core import contract

    return contract.default_debughookconfig(contract.tensors_dir(contract.DEFAULT_ROOT))


def install(config_path=IMAGE_CONFIG, site_dir=None) -> tuple[str, str]:
    """Write the default config and the `.pth` file (image build: `python3 -m localsage.container.smdebug_default`)."""
    import sysconfig

    from localsage.core import files

    site_dir = site_dir or sysconfig.get_paths()["purelib"]
    for folder in (os.path.dirname(config_path), site_dir):
        os.makedirs(folder, exist_ok=True)
    files.atomic_write_json(config_path, default_config(), indent=2)
    known = {**facts(), "default": str(config_path)}
    pth = os.path.join(site_dir, PTH_NAME)
    files.atomic_write(pth, pth_line(known))
    return str(config_path), pth


if __name__ == "__main__":
    for written in install():
        print(f"wrote {written}")
