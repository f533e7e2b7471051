"""dvc.yaml and the code agree: paths, file names, params keys and the code each stage runs."""

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import audit, cli, evaluate, model_record, store, train
from pipeline.params import Params
from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Opt-in stages: a dvc.yaml of their own, which a plain `dvc repro` does not read.
OPT_IN = yaml.safe_load((REPO / "audit" / "dvc.yaml").read_text())["stages"]
EVERY = {**STAGES, **OPT_IN}


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _written(stage: str) -> set[str]:
    return set(_paths(EVERY[stage].get("outs", []) + EVERY[stage].get("metrics", [])))


def test_stages_are_the_pipeline_in_order():
    assert list(STAGES) == ["ingest", "prepare", "train", "evaluate"]
    assert all(EVERY[name]["cmd"].startswith(f"imgpipe {name} ") for name in EVERY)


def test_the_opt_in_stages_are_the_audit_run_from_the_repository_root():
    assert list(OPT_IN) == ["audit"] and OPT_IN["audit"]["wdir"] == ".."


def test_stage_outputs_are_exactly_what_the_commands_write():
    assert _written("ingest") == {f"{cli.INTERIM.as_posix()}/{f}" for f in store.INTERIM_FILES}
    assert _written("prepare") == {
        cli.PROCESSED.as_posix(),
        f"{cli.PREPARE_REPORT.as_posix()}/report.json",
    }
    assert _paths(STAGES["prepare"]["plots"]) == [
        f"{cli.PREPARE_REPORT.as_posix()}/class_balance.png",
        f"{cli.PREPARE_REPORT.as_posix()}/samples.png",
    ]
    beside = model_record.beside_model(cli.MODEL)
    assert _written("train") == {
        cli.MODEL.as_posix(),
        beside["labels"].as_posix(),
        beside["summary"].as_posix(),
        f"{cli.LIVE.as_posix()}/params.yaml",
        f"{cli.LIVE.as_posix()}/metrics.json",
    }
    assert _paths(STAGES["train"]["plots"]) == [
        f"{cli.LIVE.as_posix()}/plots/metrics",
        f"{cli.LIVE.as_posix()}/{train.SPEEDS}",
        beside["architecture"].as_posix(),
    ]
    evaluation = [f"{cli.EVALUATION.as_posix()}/{name}" for name in evaluate.OUTPUTS]
    assert set(_paths(STAGES["evaluate"]["plots"])) | _written("evaluate") == set(evaluation)
    audited = [f"{cli.AUDIT.as_posix()}/{name}" for name in audit.OUTPUTS]
    assert set(_paths(OPT_IN["audit"]["plots"])) | _written("audit") == set(audited)


def test_each_stage_reads_only_the_raw_data_or_what_earlier_stages_write():
    available = {cli.RAW.as_posix()}
    for name, stage in EVERY.items():
        data_deps = {d for d in stage["deps"] if not d.startswith("pipeline/")}
        assert data_deps and data_deps <= available, name
        available |= _written(name)


def test_commands_pass_the_cli_defaults_for_every_path_they_declare():
    for name, stage in EVERY.items():
        defaults = {
            option.opts[0]: str(option.default)
            for option in cli.cli.commands[name].params
            if option.opts[0].startswith("--")
        }
        words = stage["cmd"].split()[2:]
        passed = dict(zip(words[::2], words[1::2], strict=True))
        assert {flag: defaults[flag] for flag in passed} == passed, name
        declared = set(_paths(stage["deps"])) | _written(name)
        needed = {
            f for f, default in defaults.items() if any(d.startswith(default) for d in declared)
        }
        assert needed <= set(passed), name


def test_listed_params_exist_and_cover_each_stages_section():
    for name, stage in EVERY.items():
        for key in stage.get("params", []):
            section, field = key.split(".")
            assert field in Params.model_fields[section].annotation.model_fields, key
        if name in Params.model_fields:
            section_model = Params.model_fields[name].annotation
            listed = {k.split(".")[1] for k in stage["params"] if k.startswith(f"{name}.")}
            assert listed == set(section_model.model_fields), name


def _imports(tree: ast.AST) -> set[str]:
    """The pipeline modules a piece of code imports (`import pipeline.x`, `from pipeline
    import x`, `from pipeline.x import y`), each with the packages above it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {
                ".".join(parts[:i]) for i in range(2, len(parts) + 1) if parts[0] == "pipeline"
            }
    return {name for name in found if _file(name) is not None}


def _file(module: str) -> Path | None:
    """pipeline.x -> pipeline/x.py or pipeline/x/__init__.py (None for a name in a module)."""
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(stage: str) -> set[str]:
    """Every file under pipeline/ that `imgpipe <stage>` can run: cli.py's module-level
    imports, those inside the stage's command, and everything they import, anywhere."""
    tree = ast.parse((REPO / "pipeline" / "cli.py").read_text())
    command = cli.cli.commands[stage].callback.__name__
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == command)
    module_level = ast.Module([n for n in tree.body if not isinstance(n, ast.FunctionDef)], [])
    todo, seen = _imports(module_level) | _imports(function), {"pipeline.cli"}
    while todo:
        module = todo.pop()
        seen.add(module)
        todo |= _imports(ast.parse(_file(module).read_text())) - seen
    return {_file(module).relative_to(REPO).as_posix() for module in seen}


def test_pipeline_init_holds_no_code_so_no_stage_depends_on_it():
    (statement,) = ast.parse((REPO / "pipeline" / "__init__.py").read_text()).body
    assert isinstance(statement, ast.Expr)  # its docstring


@pytest.mark.parametrize("stage", list(EVERY))
def test_each_stage_depends_on_exactly_the_code_its_command_can_run(stage):
    # A change to an unlisted module did not re-run the stage that uses it.
    listed = [dep for dep in EVERY[stage]["deps"] if dep.startswith("pipeline/")]
    ran = _closure(stage) - {"pipeline/__init__.py"}
    covered = {path for path in ran if any(path == d or path.startswith(f"{d}/") for d in listed)}
    assert sorted(ran - covered) == [], "run but not in deps"
    unused = [d for d in listed if not any(p == d or p.startswith(f"{d}/") for p in ran)]
    assert unused == [], "in deps but never run"
