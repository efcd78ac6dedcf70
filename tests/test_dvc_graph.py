"""The DVC graph follows the code: every stage depends on the code it runs and the params it reads.

A stage's code is its ``stages/<name>.py`` script plus every ``bestie`` module the script
imports, transitively (:func:`bestie.fingerprint.stage_code_files`, which the resume
fingerprint uses too). ``dvc.yaml`` covers a file by listing it or a folder holding it.
The params sections a stage reads are the ``params.<section>`` attributes in its script;
``dvc.yaml`` must list each as a whole section.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from bestie.fingerprint import stage_code_files

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
LOCKED_ENVIRONMENT = "requirements.lock"


def entry_script(stage: str) -> Path:
    """The ``stages/<name>.py`` script that the stage's ``cmd`` runs with ``python``."""
    words = shlex.split(STAGES[stage]["cmd"])
    assert words[0] == "python" and words[1].startswith("stages/") and words[1].endswith(".py"), (
        f"stage {stage!r}: cmd should be `python stages/<name>.py ...`, got {STAGES[stage]['cmd']!r}"
    )
    return REPO / words[1]


def listed_deps(stage: str) -> list[str]:
    """The stage's deps as written, without a trailing slash."""
    return [dep.rstrip("/") for dep in STAGES[stage].get("deps", [])]


def is_covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(f"{dep}/") for dep in deps)


def params_sections_read(script: Path) -> set[str]:
    """Top-level params sections the script reads: ``X`` of every ``params.X`` attribute."""
    tree = ast.parse(script.read_bytes(), filename=str(script))
    return {
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "params"
    }


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_the_code_it_runs(stage: str) -> None:
    deps = listed_deps(stage)
    code = [path.relative_to(REPO).as_posix() for path in stage_code_files(entry_script(stage), REPO / "bestie")]
    missing = [path for path in code if not is_covered(path, deps)]
    assert not missing, f"dvc.yaml: stage {stage!r} runs code it does not list in deps: {', '.join(missing)}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_the_locked_environment(stage: str) -> None:
    assert (REPO / LOCKED_ENVIRONMENT).is_file()
    assert LOCKED_ENVIRONMENT in listed_deps(stage), f"dvc.yaml: stage {stage!r} misses dep {LOCKED_ENVIRONMENT}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_every_params_section_it_reads(stage: str) -> None:
    listed = [entry for entry in STAGES[stage].get("params", []) if isinstance(entry, str)]
    missing = sorted(params_sections_read(entry_script(stage)) - set(listed))
    assert not missing, (
        f"dvc.yaml: stage {stage!r} reads params sections it does not list as whole sections in "
        f"params: {', '.join(missing)} (listed: {', '.join(listed) or 'none'})"
    )


def test_params_sections_are_read_from_the_script() -> None:
    script = REPO / "stages/train.py"
    assert {"train", "seed", "supervision", "pseudo_labels"} <= params_sections_read(script)
