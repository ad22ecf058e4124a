"""The configuration reference (``docs/configuration.md``), generated from the typed configs themselves.

Every job's config class is listed with each field (nested configs flattened to dotted keys), its type, its
default and its description, so the reference can never drift from the code: ``python -m
workembed.config_reference`` rewrites the file and ``--check`` fails when it is stale (a test runs the check).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REFERENCE = Path("docs/configuration.md")
PIPE = "\\|"  # a literal | inside a Markdown table cell
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("`workembed run ingest` (`jobs/configs/ingest.yaml`)", "workembed.data.config", "IngestConfig"),
    ("`workembed run train` (`jobs/configs/train.yaml`)", "workembed.train.config", "TrainConfig"),
    (
        "`workembed run evaluate`, `workembed eval` (`jobs/configs/evaluate.yaml`)",
        "workembed.eval.runner",
        "EvalConfig",
    ),
    ("`workembed eval extraction`", "workembed.eval.extraction_benchmark", "ExtractionEvalConfig"),
    ("`workembed eval matching`", "workembed.eval.matching_eval", "MatchingEvalConfig"),
    ("`workembed eval build-tasks`", "workembed.eval.esco_tasks", "BuildTasksConfig"),
    ("`workembed eval convert`", "workembed.eval.converters", "ConvertConfig"),
    ("`workembed models ...` (`jobs/configs/registry.yaml`)", "workembed.registry.config", "RegistryConfig"),
    (
        "`workembed run register` (`jobs/configs/register.yaml`)",
        "workembed.registry.jobs",
        "RegisterStageConfig",
    ),
    (
        "`workembed run promote` (`jobs/configs/promote.yaml`)",
        "workembed.registry.jobs",
        "PromoteStageConfig",
    ),
    (
        "`workembed run extract` (`jobs/configs/extract.yaml`)",
        "workembed.batch_extraction",
        "BatchExtractConfig",
    ),
    ("`workembed run synthesize` (`jobs/configs/synthesize.yaml`)", "workembed.synth.config", "SynthConfig"),
    (
        "`workembed run filter` (`jobs/configs/filter.yaml`)",
        "workembed.train.skill_filter",
        "SkillFilterConfig",
    ),
    ("`make reference` (`jobs/configs/reference.yaml`)", "workembed.reference", "ReferenceConfig"),
    ("Serving: `args` of `serve/config.yaml`", "workembed.serving.config", "ServeConfig"),
    ("`workembed pipeline run` (`jobs/configs/pipeline.yaml`)", "workembed.job_runner", "PipelineConfig"),
    ("`workembed services up|down|status`", "workembed.services", "ServicesConfig"),
    ("`workembed embed`", "workembed.cli", "EmbedConfig"),
    ("`workembed esco stats`", "workembed.taxonomy", "EscoConfig"),
)


def type_name(annotation: object) -> str:
    """A short, readable name of a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(arg) for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args if arg is not Ellipsis)}]"
    if origin is dict:
        return f"dict[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    factory = field.default_factory
    if factory is not None:
        if getattr(factory, "__name__", "") not in ("<lambda>", "list", "dict", "set"):
            return "(computed)"  # a named function: it decides from the environment or the data root
        try:
            value = factory()
        except Exception:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(see below)"
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 60 else "(long; see the YAML)"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    """``(key, type, default, description)`` per field, nested configs flattened to dotted keys."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        description = " ".join((field.description or "").split())
        nested = _nested_model(annotation)
        if nested is None:
            yield key, type_name(annotation), default_text(field), description
            continue
        container, child = nested
        summary = description or (child.__doc__ or "").strip().split("\n")[0]
        if container == "list":
            yield key, f"list[{child.__name__}]", default_text(field), summary
            yield from rows(child, f"{key}[].")
        elif container == "dict":
            yield key, f"dict[str, {child.__name__}]", default_text(field), summary
            yield from rows(child, f"{key}.<name>.")
        else:
            yield key, child.__name__, "", summary
            yield from rows(child, f"{key}.")


def _nested_model(annotation: object) -> tuple[str, type[BaseModel]] | None:
    """``("single" | "list" | "dict", model)`` when the field holds configs, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "single", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args and _nested_model(args[0]) is not None:
        return "list", _nested_model(args[0])[1]
    if origin is dict and len(args) == 2 and _nested_model(args[1]) is not None:
        return "dict", _nested_model(args[1])[1]
    for arg in args if origin in (typing.Union, types.UnionType) else ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def neutral_environment() -> Iterator[None]:
    """Defaults computed from the environment (data root, tracking server, files in the working directory)
    as on a machine without any: the reference is the same wherever it is generated."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for name in [n for n in os.environ if n.startswith(("MLFLOW_", "AWS_", "RAY_", "WORKEMBED_"))]:
        del os.environ[name]
    os.environ["WORKEMBED_DATA_DIR"] = "/nonexistent-data-root"
    with tempfile.TemporaryDirectory() as empty:
        os.chdir(empty)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)


def render() -> str:
    with neutral_environment():
        return _render()


def _render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed configs by `python -m workembed.config_reference` (do not edit by hand).",
        "Every command takes `-c FILE` (YAML), `--profile NAME` and `--set key.path=value`; nested keys are",
        "dotted here as on the command line. Unknown keys and wrong types are errors that name the key.",
        "",
    ]
    for title, module_name, class_name in SECTIONS:
        model = getattr(importlib.import_module(module_name), class_name)
        lines += [f"## {title}", "", (model.__doc__ or "").strip().split("\n")[0], ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, kind, default, description in rows(model):
            meaning = description.replace("|", PIPE)
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workembed.config_reference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="fail (exit 1) when the file is not up to date")
    parser.add_argument("--out", type=Path, default=REFERENCE, help="the reference file (%(default)s)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m workembed.config_reference", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
