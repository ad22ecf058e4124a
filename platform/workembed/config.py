"""Typed configuration: pydantic models loaded from YAML, overridable from the command line.

Every job has one config class deriving from :class:`Config`. A YAML file gives its values, an optional
``profiles:`` mapping in that file holds named variants (``local``, ``gpu``) merged over the base, and
repeated ``--set a.b.c=value`` overrides come last. Unknown keys and wrong types are rejected with a
:class:`ConfigError` that names the key and where it came from.

Relative data locations (ESCO exports, job ads, benchmarks) resolve against one data root, so that a job
submitted with ``ray job submit --working-dir .`` (which runs from an unpacked copy elsewhere) reads the
same files: ``WORKEMBED_DATA_DIR`` (an absolute path) or, when it exists, ``../shared/data`` beside the
project.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, SecretBytes, SecretStr, ValidationError

from workembed.errors import ConfigError

DATA_DIR_ENV = "WORKEMBED_DATA_DIR"
SERVICE_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    DATA_DIR_ENV,
)
"""Where jobs and replicas find their services and data: the tracking server, S3 and the data root."""
PROFILES_KEY = "profiles"

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every workembed config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------------------------- loading


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    profile: str | None = None,
) -> C:
    """Build ``cls`` from a YAML file, an optional profile in it, and ``key.path=value`` overrides."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    profiles = raw.pop(PROFILES_KEY, None) or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError(f"{source}: '{PROFILES_KEY}' must be a mapping of profile name to settings")
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"{source}: unknown profile '{profile}' (profiles in this file: {known})")
        raw = deep_merge(raw, profiles[profile])
    set_keys: list[str] = []
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
        set_keys.append(key)
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, source, set_keys)) from None


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The config options every configurable command shares: ``-c FILE``, ``--profile NAME`` and
    ``--set KEY=VALUE``."""
    parser.add_argument("-c", "--config", type=Path, help="YAML config file")
    parser.add_argument("--profile", help="named profile inside the config file (e.g. local, gpu)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key; repeatable)",
    )


def config_from_args(cls: type[C], args: argparse.Namespace, shortcuts: dict[str, object] | None = None) -> C:
    """Load ``cls`` from the shared options; non-None shortcut flags become ``--set`` overrides first."""
    flags = [f"{key}={json.dumps(value)}" for key, value in (shortcuts or {}).items() if value is not None]
    return load_config(cls, args.config, [*flags, *args.overrides], args.profile)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML (numbers, booleans, lists, null)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key.path=value, got '{item}'")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``extra`` merged in recursively (mappings merge, everything else replaces)."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dump_config(config: Config) -> str:
    """The fully resolved config as YAML (what a run logs as its parameters), without its secrets."""
    return yaml.safe_dump(public_dump(config), sort_keys=False)


SECRET_TYPES = (SecretStr, SecretBytes)


def public_dump(config: BaseModel, **kwargs: Any) -> dict[str, Any]:
    """``config.model_dump(mode="json", **kwargs)`` without secrets: every field typed ``SecretStr`` or
    ``SecretBytes`` (alone, optional or in a container), in nested configs, lists and mappings too, is null,
    set or not (a mapping entry holding a secret is left out). Every config written out of the process
    (files, MLflow parameters, payloads) goes through here; the result validates again, with the secrets
    unset, i.e. taken from the environment."""
    kwargs.setdefault("mode", "json")
    return _blank_secrets(config, config.model_dump(**kwargs))


def _blank_secrets(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        for name, field in type(value).model_fields.items():
            keys = {name, field.alias, field.serialization_alias} - {None}
            child = getattr(value, name, None)
            if _holds_secret(field.annotation) or isinstance(child, SECRET_TYPES):
                for key in keys & dumped.keys():
                    dumped[key] = None
            else:
                for key in keys & dumped.keys():
                    _blank_secrets(child, dumped[key])
    elif isinstance(value, Mapping) and isinstance(dumped, dict):
        for key, child in value.items():
            out = key if key in dumped else str(key)
            if isinstance(child, SECRET_TYPES):
                dumped.pop(out, None)
            elif out in dumped:
                _blank_secrets(child, dumped[out])
    elif isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        for child, out in zip(value, dumped, strict=True):
            _blank_secrets(child, out)
    return dumped


def _holds_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, SECRET_TYPES):
        return True
    return any(_holds_secret(arg) for arg in get_args(annotation))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    node = target
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' holds a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(err: ValidationError, source: str, set_keys: Sequence[str]) -> str:
    lines = [f"invalid config ({source}):"]
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "<root>"
        from_set = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in set_keys)
        origin = " (from --set)" if from_set else ""
        lines.append(f"  {key}{origin}: {problem['msg']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- data root


def project_root() -> Path:
    """The source checkout this package runs from (``platform/workembed`` → two levels up)."""
    return Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """The data root: ``$WORKEMBED_DATA_DIR`` (absolute), else ``../shared/data`` when present, else None."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        root = Path(env)
        if not root.is_absolute():
            raise ConfigError(f"{DATA_DIR_ENV} must be an absolute path, got '{env}'")
        return root
    for base in (Path.cwd(), project_root()):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations (``s3://``, ``file://``, ``gs://``)."""
    return "://" in location


def resolve_data_path(location: str | Path) -> str:
    """Resolve a data location.

    URIs and absolute paths stay as they are. A relative path joins the data root when it exists there,
    else the current directory when it exists there; otherwise it is returned joined to the data root (or
    as given, without a data root) so that the reader's error names the place it looked.
    """
    text = str(location)
    if is_uri(text) or Path(text).is_absolute():
        return text
    root = data_root()
    if root is not None and (root / text).exists():
        return str(root / text)
    if Path(text).exists():
        return str(Path(text).resolve())
    return str(root / text) if root is not None else text
