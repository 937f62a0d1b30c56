"""The README's promise: its test command is what CI runs, verbatim."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.DOTALL)]


def test_readme_opens_with_the_demo_and_test_commands():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    assert blocks[0].endswith("p2pinfer demo")
    assert "pytest" in blocks[1]
    for cmd in blocks[:2]:
        assert "pip install torch==2.13.0 &&" in cmd


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _bash_blocks((REPO / "README.md").read_text())[1]
    assert test_cmd in (REPO / ".ci" / "run").read_text()
