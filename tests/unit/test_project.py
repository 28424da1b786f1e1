"""The project's own promises: README commands, CI script, documentation."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = ROOT.joinpath("README.rst").read_text()
    ci = ROOT.joinpath(".ci", "run").read_text().splitlines()
    command = ci[-1]
    assert ".venv/bin/python -m pytest" in command
    assert f"    {command}\n" in readme


def test_readme_opens_with_the_two_commands():
    blocks = [line.strip() for line in ROOT.joinpath("README.rst").read_text().splitlines() if line.startswith("    ")]
    assert blocks[0].endswith(".venv/bin/twistd -n switchd")
    assert blocks[1].endswith(".venv/bin/python -m pytest")
