"""params.yaml loading and validation (one JSON schema per top-level section, in schema/)."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import BadInput

SECTIONS = ("data", "encoder", "evaluate", "train", "experiments")

# Language codes known to the evaluation and training data.
KNOWN_LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")


class ConfigError(BadInput):
    pass


def schema() -> dict[str, Any]:
    props = {
        name: json.loads(resources.files("hybridir").joinpath(f"schema/{name}.json").read_text())
        for name in SECTIONS
    }
    return {"type": "object", "properties": props, "required": list(SECTIONS),
            "additionalProperties": False}


def validate(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Raise ConfigError naming the key, the bad value and what is allowed."""
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            allowed = err.schema.get("description", "")
            lines.append(f"  {key}: {err.message}" + (f" (allowed: {allowed})" if allowed else ""))
        raise ConfigError(f"invalid parameters in {source}:\n" + "\n".join(lines))
    return params


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found (run from the repository root, or pass --params)")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of sections {SECTIONS}")
    return validate(params, str(path))
