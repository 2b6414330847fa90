"""The imports go the one way the code map says (pyproject.toml's import-linter
contracts): checked here on the package as it is, and on a copy given one import against
the grain, which must be caught."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint(root):
    done = subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    return done.returncode, done.stdout + done.stderr


def test_the_package_keeps_every_contract():
    code, output = lint(ROOT)
    assert code == 0 and "0 broken" in output, output


def test_an_import_against_the_grain_breaks_a_contract(tmp_path):
    shutil.copytree(ROOT / "gaspar2", tmp_path / "gaspar2")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    wire = tmp_path / "gaspar2" / "protocol" / "wire.py"
    wire.write_text(wire.read_text() + "\nfrom ..frontend import frames  # noqa\n")
    code, output = lint(tmp_path)
    assert code != 0 and "BROKEN" in output, output
    assert "gaspar2.protocol.wire -> gaspar2.frontend.frames" in output, output
