"""The README stays true to the code."""
import re
from pathlib import Path

from localsage.core.hyperparameters import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_hyperparameter_reference_matches_the_code():
    text = README.read_text()
    m = re.search(r"<!-- hyperparameters:begin -->\n(.*?)<!-- hyperparameters:end -->", text, re.S)
    assert m, "README lost its hyperparameter reference markers"
    assert m.group(1).strip() == markdown_table().strip(), "regenerate with: localsage hyperparameters"


def test_setup_is_exactly_two_commands():
    text = README.read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", setup, re.S)
    commands = [l for b in blocks for l in b.splitlines() if l.strip()]
    assert commands == ["make install", "make test"]


def fenced_commands():
    """Command lines of the README's shell blocks (fences with no language, bash, sh or console)."""
    lang = None
    for raw in README.read_text().splitlines():
        if raw.startswith("```"):
            lang = None if lang is not None else (raw[3:].strip() or "sh")
            continue
        if lang in ("sh", "bash", "console"):
            line = raw.split("#", 1)[0].strip()
            if line:
                yield line


def make_targets():
    import subprocess

    out = subprocess.run(["make", "-pRrq", "-f", "Makefile"], cwd=README.parent, capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z][\w-]*):", out, re.M)}


def test_readme_commands_exist():
    from localsage.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    targets = make_targets()
    seen_make = seen_cli = 0
    for line in fenced_commands():
        words = line.split()
        if words[0] == "make":
            named = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            for target in named[:1]:
                assert target in targets, f"README runs `{line}` but the Makefile has no target {target!r}"
                seen_make += 1
        elif words[0].endswith("localsage") and len(words) > 1:
            assert words[1] in subcommands, f"README runs `{line}` but localsage has no subcommand {words[1]!r}"
            seen_cli += 1
    assert seen_make >= 3 and seen_cli >= 3
