"""The README works when pasted: its Python snippets run as shown, its test command is what
CI runs, and it names no file a user does not have."""

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .support.notebooks import cell_text

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def is_notebook_block(block: str) -> bool:
    return any(line.lstrip().startswith("%") or "= %" in line for line in block.splitlines())


def test_ci_runs_the_readme_test_command_verbatim():
    commands = code_blocks("bash")
    assert len(commands) >= 2, "the README starts with two commands"
    test_command = commands[1].strip()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
    assert "venv" in test_command, "the test command installs into a new virtual environment"


def test_readme_names_no_file_outside_the_repository():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), \
                f"README links {target}, which is not in the repository"
    assert "../" not in README, "README names a file outside the repository"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", [b for b in code_blocks("python") if not is_notebook_block(b)],
                         ids=lambda b: b.splitlines()[0][:40])
def test_script_snippet_runs_as_pasted(block, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(block)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, f"{block}\n--- stderr ---\n{out.stderr[-4000:]}"


@pytest.mark.timeout(300)
def test_notebook_snippets_run_in_a_kernel_as_pasted(tmp_path):
    blocks = [b for b in code_blocks("python") if is_notebook_block(b)]
    assert blocks, "the README shows the notebook magics"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(b) for b in blocks])
    env_home = tmp_path / "home"    # %cluster start must not find the developer's cluster file
    env_home.mkdir()
    NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(
                       env={**__import__("os").environ, "HOME": str(env_home)})
    for block, cell in zip(blocks, nb.cells, strict=True):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{block}\n--- output ---\n{cell_text(cell)}"
