"""params.yaml loading and validation (one JSON schema per top-level section, in schema/)."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ..errors import BadInput

SECTIONS = ("data", "encoder", "evaluate", "train", "experiments", "resources")



class ConfigError(BadInput):
    pass


class Params(dict):
    """A params mapping that records which leaf keys (dotted) its readers look at.

    Stages declare the params they depend on; the recorded reads let tests (and `HYBRIDIR_TRACE`)
    check that the declaration is exactly what the code reads. Nested sections are Params too and
    share one record. Iteration yields key names without counting them as reads; items(), values()
    and whole-mapping copies read (and record) every leaf.
    """

    def __init__(self, data: dict[str, Any], source: str = "", prefix: str = "",
                 reads: set[str] | None = None):
        self.source, self._prefix = source, prefix
        self.reads: set[str] = set() if reads is None else reads
        # an empty mapping is a leaf: reading it is a read (e.g. experiments.recipes: {})
        super().__init__({k: Params(v, source, f"{prefix}{k}.", self.reads) if isinstance(v, dict) and v else v
                          for k, v in data.items()})

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if not isinstance(value, Params):
            self.reads.add(f"{self._prefix}{key}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self):  # a Python-level __iter__ also sends dict(p) and {**p} through __getitem__
        return iter(list(super().keys()))

    def items(self):  # type: ignore[override]
        return [(k, self[k]) for k in super().keys()]

    def values(self):  # type: ignore[override]
        return [self[k] for k in super().keys()]

    def plain(self) -> dict[str, Any]:
        """A plain dict copy, without recording reads (for serialisers that need exact dicts)."""
        return {k: v.plain() if isinstance(v, Params) else v for k, v in dict.items(self)}


def schema() -> dict[str, Any]:
    props = {
        name: json.loads(resources.files("hybridir").joinpath(f"pipeline/schema/{name}.json").read_text())
        for name in SECTIONS
    }
    # a recipe holds train settings: each is checked by the train section's own rules
    recipe = {k: v for k, v in props["train"].items() if k != "required"} | {"minProperties": 1}
    props["experiments"]["properties"]["recipes"]["additionalProperties"] = recipe
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


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} not found (run from the repository root, or pass --params)")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of sections {SECTIONS}")
    return Params(validate(params, str(path)), str(path))


class _RecipeTrain(Params):
    """The train section with a recipe's values in place of its own: a read of an overridden key is
    recorded as the recipe's key (experiments.recipes.<name>.<key>), the one a stage declares."""

    def __init__(self, train: Params, recipe: Params, name: str):
        super().__init__(train.plain(), train.source, "train.", train.reads)
        self._recipe, self._name = recipe, name

    def __getitem__(self, key: str) -> Any:
        if key in self._recipe:
            return self._recipe[key]
        return super().__getitem__(key)


def with_recipe(params: Params, name: str) -> Params:
    """`params` with experiments.recipes[name]'s train settings in place of train's (recipe study)."""
    recipes = params["experiments"]["recipes"]
    if name not in recipes:
        raise ConfigError(f"recipe {name!r} is not in experiments.recipes of {params.source} "
                          f"(defined: {', '.join(recipes) or 'none'})")
    out = Params({}, params.source, "", params.reads)
    for section in params:
        dict.__setitem__(out, section, dict.__getitem__(params, section))
    dict.__setitem__(out, "train", _RecipeTrain(dict.__getitem__(params, "train"), recipes[name], name))
    return out
