"""`hybridir` command line: one subcommand per pipeline stage.

Each stage module exposes `register(subparsers)`, which adds its subcommand and sets `func`.
Only the module of the command being run is imported, so a stage's process loads exactly the
code its stage depends on (pipeline.stages.code_deps derives that set from the imports).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

from .errors import UserError

# subcommand -> module of hybridir that registers it (and holds the stage's code)
COMMANDS = {
    "fetch": "data.fetch", "eval-data": "data.evaldata", "train-data": "data.traindata",
    "domain-data": "data.domain", "dev-data": "data.devdata", "batches": "data.batches",
    "import-encoder": "model.encoder_import", "train": "train.trainer",
    "encode": "evaluate.encode", "evaluate": "evaluate.scoring", "beir": "evaluate.beir", "probe": "evaluate.probe",
    "report": "report.build", "dvc-yaml": "pipeline.stages",
}
# Set to a directory to record, per command, the params keys it read and the hybridir modules it
# loaded (the tests compare them with the stage table).
TRACE_ENV = "HYBRIDIR_TRACE"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with `command`'s alone (no other stage module loaded)."""
    parser = argparse.ArgumentParser(prog="hybridir", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        if command in (None, name):
            importlib.import_module(f"hybridir.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The default run is offline; users with hub access can override.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    args.argv = argv   # `train` re-runs its own command line under torchrun
    try:
        if isinstance(getattr(args, "params", None), str):
            from .pipeline.config import load_params

            args.params = load_params(args.params)
            if getattr(args, "recipe", None):   # batches / train of a recipe-study run
                from .pipeline.config import with_recipe

                args.params = with_recipe(args.params, args.recipe)
            if os.environ.get("DVC_STAGE") and args.command != "dvc-yaml":
                _check_dvc_yaml(args.params)
        code = int(args.func(args) or 0)
    except UserError as exc:   # bad input the user can fix: one line; anything else is a bug, with traceback
        print(f"hybridir {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(TRACE_ENV):
        _write_trace(Path(os.environ[TRACE_ENV]), argv, getattr(args, "params", None))
    return code


def _check_dvc_yaml(params) -> None:
    """Under `dvc repro` / `dvc exp run`: refuse to run from a dvc.yaml generated for other settings.

    dvc.yaml lists one stage per run of experiments.*; DVC cannot add stages when those lists change
    (e.g. `dvc exp run -S experiments.seeds=[0,1]`), so the first stage it runs stops, before any work.
    """
    from .pipeline.config import ConfigError

    # Loaded like a subcommand, not imported: this check refuses or allows a run but never changes an
    # output, so the stage table's module is not a code dependency of every stage (pipeline.stages.code_deps).
    render_dvc_yaml = importlib.import_module(f"hybridir.{COMMANDS['dvc-yaml']}").render_dvc_yaml
    dvc_yaml = Path(os.environ.get("DVC_ROOT", ".")) / "dvc.yaml"
    if dvc_yaml.is_file() and dvc_yaml.read_text(encoding="utf-8") != render_dvc_yaml(params.plain(), params.source):
        raise ConfigError(
            f"{dvc_yaml} was generated for other settings than {params.source} (the runs listed under "
            f"experiments.* or the datasets changed), so DVC would run an incomplete grid. Nothing was "
            f"run (`dvc checkout` restores the outputs DVC removed before starting this stage). Set the "
            f"values in {params.source}, run `hybridir dvc-yaml --params {params.source}`, commit, then "
            "`dvc exp run` / `dvc repro` (or run the grid with `snakemake`, which follows the params itself).")


def _write_trace(trace_dir: Path, argv: list[str], params) -> None:
    record = {"argv": argv, "params": sorted(params.reads) if params is not None else [],
              "modules": sorted(m for m in sys.modules if m == "hybridir" or m.startswith("hybridir."))}
    trace_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]
    (trace_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
