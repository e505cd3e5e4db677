"""The README stays true to the code."""
import re
from pathlib import Path

from localsage.hyperparameters import markdown_table

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
