"""The pipeline's stage table: the one definition both Snakemake and DVC are built from.

The Snakefile turns each Stage into a rule (workflow/rules/stages.smk); `hybridir dvc-yaml`
writes the same stages as dvc.yaml. A test checks the committed dvc.yaml is what this table
generates, so the two DAGs cannot drift.

What a stage reads is derived or checked, never hoped for: its code dependencies are the source
files its module imports (`code_deps`, from the import statements); its params are declared here
and the tests compare them with the keys the stage's code actually reads (config.Params records them).
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..cli import COMMANDS
from .config import ConfigError, Params

EXECUTABLE = "hybridir"


@dataclass(frozen=True)
class Stage:
    name: str                      # DVC stage name = Snakemake rule name (an identifier)
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]          # paths ending in "/" are directories
    params: tuple[str, ...] = ()   # dotted keys of the params file the stage reads
    metrics: tuple[str, ...] = ()  # outputs that are DVC metrics (small JSON, kept in git)
    plots: tuple[str, ...] = field(default=())  # outputs that are DVC plots
    uncached: tuple[str, ...] = ()  # outputs DVC does not cache (cache: false): they differ run to run
    # What one job of the stage asks the scheduler for (Snakemake's threads and resources, Slurm's
    # sbatch), from the params' resources section. Not stage params: they change no result.
    threads: int = 1               # also torch's and faiss's threads (Snakemake sets OMP_NUM_THREADS)
    mem_mb: int = 1000
    runtime: int = 60              # minutes
    gpus: int = 0

    @property
    def all_outs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots + self.uncached

    @property
    def command(self) -> str:
        """The `hybridir` subcommand the stage runs (a key of cli.COMMANDS and of params' resources)."""
        return self.cmd.split()[1]


SRC = "src/hybridir"   # the package's path in the repository, as stage deps name it
PACKAGE_DIR = Path(__file__).resolve().parent.parent   # src/hybridir (this file: pipeline/stages.py)
# Every stage runs through the `hybridir` entry point (cli.py, and the package's __init__.py).
ENTRY = ("__init__.py", "cli.py")


def _module_file(dotted: str, package_dir: Path) -> str | None:
    """'a.b' -> 'a/b.py' or 'a/b/__init__.py' relative to the package, if it is a hybridir module."""
    for rel in (dotted.replace(".", "/") + ".py", dotted.replace(".", "/") + "/__init__.py"):
        if (package_dir / rel).is_file():
            return rel
    return None


def _imports(rel: str, package_dir: Path) -> set[str]:
    """Package files that module file `rel` imports anywhere (top level or inside functions), and the
    package data files it opens by a literal name (`...joinpath("data/sources.tsv")`)."""
    tree = ast.parse((package_dir / rel).read_text(encoding="utf-8"), rel)
    package = rel.removesuffix(".py").split("/")[:-1]   # "a/b.py" and "a/__init__.py" are in package a
    found: set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):   # importing a.b runs a/__init__.py first
            if (hit := _module_file(".".join(parts[:i]), package_dir)) is not None:
                found.add(hit)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
            elif node.module and node.module.split(".")[0] == "hybridir":
                base, node_module = [], node.module.split(".", 1)[1:]
                node = ast.ImportFrom(".".join(node_module) or None, node.names, 1)
            else:
                continue
            stem = base + (node.module.split(".") if node.module else [])
            if stem:
                add(".".join(stem))
            for alias in node.names:   # `from . import plots`: names may be modules
                if _module_file(".".join(stem + [alias.name]), package_dir):
                    add(".".join(stem + [alias.name]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hybridir."):
                    add(alias.name.split(".", 1)[1])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "joinpath" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and (package_dir / node.args[0].value).is_file()):
            found.add(node.args[0].value)
    found.discard(rel)
    return found


def code_deps(module: str, package_dir: Path = PACKAGE_DIR) -> tuple[str, ...]:
    """The source files a stage whose code is `module` runs: the entry point and every package file
    `module` imports, transitively (lazy imports included), as repository paths.

    The params schema files are not included: validation only accepts or rejects a params file,
    it never changes a value a stage sees.
    """
    parts = module.split(".")
    # importing a.b (cli.build_parser) runs a/__init__.py first
    parents = [_module_file(".".join(parts[:i]), package_dir) for i in range(1, len(parts))]
    todo = [_module_file(module, package_dir) or f"{module}.py", *ENTRY, *(p for p in parents if p)]
    seen: set[str] = set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        if rel.endswith(".py"):
            todo.extend(_imports(rel, package_dir) - seen)
    return tuple(f"{SRC}/{rel}" for rel in sorted(seen))


def num(x: float) -> str:
    """A number as tags, commands and the report write it (0.25, 1)."""
    return f"{x:g}"


@dataclass(frozen=True)
class Run:
    """One trained model: a batch strategy and seed, optionally at a swept alpha, data fraction or
    domain size, or with a recipe's train settings."""
    strategy: str
    seed: int
    alpha: float | None = None     # None: train.alpha from params (hybrid only)
    fraction: float | None = None  # None: every training group
    domain: int | str | None = None  # NFCorpus train queries mixed in ("all": every one); None: none
    recipe: str | None = None      # experiments.recipes key (recipe study); None: the train section

    @property
    def tag(self) -> str:
        sweep = (f"-a{num(self.alpha)}" if self.alpha is not None else "") + \
                (f"-f{num(self.fraction)}" if self.fraction is not None else "") + \
                (f"-d{self.domain}" if self.domain is not None else "") + \
                (f"-r{self.recipe}" if self.recipe is not None else "")
        return f"{self.strategy}{sweep}-s{self.seed}"

    @property
    def main(self) -> bool:
        """A run of the main grid (no sweep setting)."""
        return self.alpha is None and self.fraction is None and self.domain is None and self.recipe is None


def ident(*parts: str) -> str:
    """A stage name from its parts ('-' and '.' become '_': stage and rule names are identifiers)."""
    return "_".join(p.replace("-", "_").replace(".", "_") for p in parts)


def make_run(params: dict[str, Any], strategy: str, seed: int, *, alpha: float | None = None,
             fraction: float | None = None, domain: int | str | None = None, recipe: str | None = None) -> Run:
    """The Run for one setting. A sweep point that is another run's setting is that run, trained
    once: alpha = train.alpha is the main hybrid run; hybrid at alpha 1 (0) builds exactly the
    X-X-mono (X-Y) batches (batches.py, step 1), so it is that run; fraction 1 is the full data;
    domain size 0 is no domain data; a recipe whose every setting equals train's is the default."""
    if recipe is not None and all(params["train"][k] == v
                                  for k, v in params["experiments"]["recipes"][recipe].items()):
        recipe = None
    if alpha is not None and float(alpha) in (0.0, 1.0):
        strategy, alpha = ("xx_mono" if float(alpha) == 1.0 else "xy"), None
    if alpha is not None and float(alpha) == float(params["train"]["alpha"]):
        alpha = None
    if fraction is not None and float(fraction) == 1.0:
        fraction = None
    if domain == 0:
        domain = None
    return Run(strategy, seed, alpha=alpha, fraction=fraction, domain=domain, recipe=recipe)


def recipe_runs(params: dict[str, Any]) -> dict[str, list[Run]]:
    """The recipe study: per recipe (and "default", the train section, first) its hybrid runs, one per
    experiments.recipe_seeds. A recipe with train's own settings is the default (make_run): no row."""
    exp = params["experiments"]
    if not exp["recipes"]:
        return {}
    out = {name or "default": [make_run(params, "hybrid", seed, recipe=name) for seed in exp["recipe_seeds"]]
           for name in [None] + list(exp["recipes"])}
    return {name: rs for name, rs in out.items() if name == "default" or rs[0].recipe is not None}


def grid_runs(params: dict[str, Any]) -> list[Run]:
    """The trained models scored on the evaluation sets (each once): the main grid, then the optional
    alpha, data-size and domain-size sweeps."""
    exp = params["experiments"]
    main = [Run(s, seed) for s in exp["strategies"] for seed in exp["seeds"]]
    alpha = [make_run(params, "hybrid", seed, alpha=a) for a in exp["alpha_sweep"] for seed in exp["seeds"]]
    size = [make_run(params, s, seed, fraction=f) for f in exp["data_fractions"]
            for s in exp["strategies"] for seed in exp["seeds"]]
    domain = [make_run(params, s, seed, domain=d) for d in exp["domain_sizes"]
              for s in exp["strategies"] for seed in exp["seeds"]]
    return list(dict.fromkeys(main + alpha + size + domain))


def runs(params: dict[str, Any]) -> list[Run]:
    """Every trained model (each once): grid_runs, then the recipe study's."""
    return list(dict.fromkeys(grid_runs(params) + [r for rs in recipe_runs(params).values() for r in rs]))


def beir_datasets(params: dict[str, Any], run: Run | None) -> list[str]:
    """The BEIR checks of one model (run None: the zero-shot model): experiments.beir for the zero-shot
    model and the main grid; NFCorpus for every point of the domain-size curves (the main grid is
    their size 0) and the zero-shot model, their reference."""
    exp = params["experiments"]
    domain = ["nfcorpus"] if exp["domain_sizes"] else []
    if run is None or run.main:
        return list(dict.fromkeys(list(exp["beir"]) + domain))
    return domain if run.domain is not None else []


def run_params(params: dict[str, Any], run: Run, keys: tuple[str, ...]) -> tuple[str, ...]:
    """The params `keys` as `run`'s stages read them: a recipe's settings in place of train's
    (config.with_recipe records those reads as experiments.recipes.<name>.<key>)."""
    if run.recipe is None:
        return keys
    recipe = params["experiments"]["recipes"][run.recipe]
    return tuple(f"experiments.recipes.{run.recipe}.{k[len('train.'):]}"
                 if k.startswith("train.") and k[len("train."):] in recipe else k for k in keys)


def model_tags(params: dict[str, Any]) -> list[str]:
    """Every model the evaluation scores: the zero-shot base model and each trained run."""
    return ["zeroshot"] + [r.tag for r in runs(params)]


DEV = "dev"   # the dev benchmark's dataset name (devdata.py)
DEV_QA = "dev_qa"   # its monolingual QA part (held-out ARCD questions), when arcd is a training source


def dev_datasets(params: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The dev benchmark's datasets -> (stage output, tables directory); none when experiments.dev is off."""
    if not params["experiments"]["dev"]:
        return {}
    qa = {DEV_QA: ("data/dev_qa/", "data/dev_qa")} if "arcd" in params["data"]["train_sources"] else {}
    return {DEV: ("data/dev/", "data/dev")} | qa


def scored_datasets(params: dict[str, Any], dev_only: bool = False) -> dict[str, tuple[str, str]]:
    """The datasets a model is encoded and evaluated on -> (the stage output holding it, its tables'
    directory): data.eval_datasets, then the dev benchmark when experiments.dev is on. `dev_only`: a
    run of the recipe study alone, scored on the dev benchmark only (recipes are chosen there, not on
    the evaluation sets)."""
    dev = dev_datasets(params)
    if dev_only:
        return dev
    return {ds: ("data/eval/", f"data/eval/{ds}") for ds in params["data"]["eval_datasets"]} | dev


def stages(params: dict[str, Any], params_file: str = "params.yaml") -> list[Stage]:
    enc = params["encoder"]["name"]
    base = f"models/base/{enc}/"
    pairs = "data/train/"
    p = f"--params {params_file}"
    source = params["encoder"]["source"]
    import_params = ("encoder.source", "encoder.query_prefix", "encoder.passage_prefix", "encoder.pooling") + (
        ("encoder.hub_id", "encoder.revision") if source == "hub" else ())
    out: list[Stage] = [
        Stage("fetch", f"{EXECUTABLE} fetch --out data/raw",
              deps=(), outs=("data/raw/",)),
        Stage("eval_data", f"{EXECUTABLE} eval-data {p} --raw data/raw --out data/eval",
              deps=("data/raw/",), outs=("data/eval/",),
              params=("data.eval_datasets", "data.eval_langs", "data.eval_max_queries_per_lang",
                      "data.eval_pool", "data.seed")),
        Stage("train_data", f"{EXECUTABLE} train-data {p} --raw data/raw --out data/train",
              deps=("data/raw/",), outs=(pairs,),
              params=("data.train_sources", "data.train_langs", "data.valid_fraction",
                      "data.max_groups_per_source", "data.context_sentences", "data.context_sides",
                      "data.seed")),
    ] + ([
        Stage("dev_data", f"{EXECUTABLE} dev-data --pairs {pairs}pairs.parquet --raw data/raw --out data/dev"
              + (" --qa-out data/dev_qa" if DEV_QA in dev_datasets(params) else ""),
              deps=(pairs, "data/raw/"), outs=tuple(out for out, _ in dev_datasets(params).values())),
    ] if params["experiments"]["dev"] else []) + [
        Stage("import_encoder", f"{EXECUTABLE} import-encoder {p} --out {base}",
              deps=(), outs=(base,), params=import_params),
    ]
    all_runs = runs(params)
    study_only = set(all_runs) - set(grid_runs(params))   # scored on the dev benchmark alone
    domain_pairs = "data/train_domain/"
    if any(r.domain is not None for r in all_runs):
        out.append(Stage("domain_data", f"{EXECUTABLE} domain-data --raw data/raw --pairs {pairs}pairs.parquet "
                         f"--out {domain_pairs}", deps=("data/raw/", pairs), outs=(domain_pairs,)))
    models: dict[str, tuple[str, Run | None]] = {"zeroshot": (base, None)}
    # train reads every train.* setting except alpha (batch_size, steps and extra_negatives to check
    # that the batch table is current) and data.train_langs (for the validation batches).
    train_params = tuple(f"train.{k}" for k in params["train"] if k != "alpha") + ("data.train_langs",)
    if params["experiments"]["recipes"] and not params["experiments"]["dev"]:
        raise ConfigError(f"{params_file}: experiments.recipes needs experiments.dev: true (recipes are "
                          "compared on the dev benchmark only)")
    for run in all_runs:
        def read(keys: tuple[str, ...], run: Run = run) -> tuple[str, ...]:
            return run_params(params, run, keys)

        batches = f"data/batches/{run.tag}.parquet"
        model_dir = f"models/trained/{enc}/{run.tag}/"
        models[run.tag] = (model_dir, run)
        run_pairs = pairs if run.domain is None else domain_pairs
        options = (f" --alpha {num(run.alpha)}" if run.alpha is not None else "") + \
                  (f" --group-fraction {num(run.fraction)}" if run.fraction is not None else "") + \
                  (f" --domain-queries {run.domain}" if run.domain is not None else "") + \
                  (f" --recipe {run.recipe}" if run.recipe is not None else "")
        tracks_alpha = run.strategy == "hybrid" and run.alpha is None
        out.append(Stage(
            ident("batches", run.tag),
            f"{EXECUTABLE} batches {p} --pairs {run_pairs}pairs.parquet --strategy {run.strategy} "
            f"--seed {run.seed}{options} --out {batches}",
            deps=(run_pairs,), outs=(batches,),
            params=read(("train.batch_size", "train.steps", "train.extra_negatives", "train.bitext_share",
                         "data.train_langs") + (("train.alpha",) if tracks_alpha else ()))))
        out.append(Stage(
            ident("train", run.tag),
            f"{EXECUTABLE} train {p} --base {base} --pairs {run_pairs}pairs.parquet "
            f"--batches {batches}{' --recipe ' + run.recipe if run.recipe else ''} --out {model_dir}",
            deps=(base, run_pairs, batches), outs=(model_dir,),
            params=read(train_params)))
    report_deps = []
    for tag, (model_dir, run) in models.items():
        for ds, (tables_out, tables) in scored_datasets(params, run in study_only).items():
            res = f"results/{enc}/{tag}/{ds}/"
            out.append(Stage(
                ident("encode", tag, ds),
                f"{EXECUTABLE} encode {p} --model {model_dir} --eval-data {tables} "
                f"--out {res}embeddings",
                deps=(model_dir, tables_out),
                outs=(f"{res}embeddings/",),
                # prefixes and pooling come from the model directory (its sentence-transformers config)
                # train.freeze_layers: where the encoder graph is split (modeling.lower_states)
                params=("encoder.max_length", "evaluate.batch_size", "evaluate.precision", "train.freeze_layers")))
            metrics = f"{res}metrics.json"
            report_deps += [metrics, f"{res}eval/", f"{res}embeddings/"]
            out.append(Stage(
                ident("evaluate", tag, ds),
                f"{EXECUTABLE} evaluate {p} --embeddings {res}embeddings --eval-data {tables} "
                f"--out {res}eval --metrics {metrics}",
                deps=(f"{res}embeddings/", tables_out),
                outs=(f"{res}eval/",), metrics=(metrics,), params=("evaluate.top_k", "evaluate.top_k_cells")))
        in_grid = run is None or run not in study_only
        if params["experiments"]["probe"] and in_grid and (run is None or run.main):   # the main grid only
            result = f"results/{enc}/{tag}/probe.json"
            report_deps.append(result)
            out.append(Stage(
                ident("probe", tag),
                f"{EXECUTABLE} probe {p} --model {model_dir} --pairs {pairs}pairs.parquet --out {result}",
                deps=(model_dir, pairs), outs=(), metrics=(result,)))
        for ds in beir_datasets(params, run) if in_grid else []:
            result = f"results/{enc}/{tag}/beir/{ds}.json"
            report_deps.append(result)
            out.append(Stage(
                ident("beir", tag, ds),
                f"{EXECUTABLE} beir {p} --raw data/raw --model {model_dir} --dataset {ds} --out {result}",
                deps=("data/raw/", model_dir), metrics=(result,),
                outs=(), params=("encoder.max_length", "evaluate.batch_size", "evaluate.precision",
                                 "train.freeze_layers", "evaluate.beir_max_queries", "evaluate.beir_max_docs", "data.seed")))
    # The report reads each trained model's train_summary.json (timings.md) and the recipe study's
    # loss.csv besides the results.
    trained = tuple(d for d, run in models.values() if run is not None)
    exp = params["experiments"]
    sweep_csvs = tuple(f"reports/{name}.csv" for name, key in
                       (("alpha_sweep", "alpha_sweep"), ("data_size", "data_fractions"),
                        ("domain_size", "domain_sizes"), ("beir", "beir"), ("recipes", "recipes"))
                       if exp[key])
    out.append(Stage(
        "report", f"{EXECUTABLE} report {p} --results results/{enc} --out reports",
        deps=tuple(report_deps) + trained,
        outs=("reports/report.md", "reports/headline.csv", "reports/figures/") + sweep_csvs,
        metrics=("reports/summary.json",), uncached=("reports/timings.md",),
        # Its title and provenance describe the run (data, encoder, steps) and list the stage commands;
        # the recipe study's tags depend on whether a recipe's settings equal train's (make_run).
        # (recipe_seeds only with recipes: recipe_runs reads it then)
        params=tuple(dict.fromkeys(tuple(k for key in exp if key != "recipe_seeds" or exp["recipes"]
                                         for k in leaf_keys(params, f"experiments.{key}")) + (
            "data.eval_datasets", "data.eval_langs", "data.eval_max_queries_per_lang", "data.eval_pool",
            "data.train_langs", "data.train_sources", "encoder.name", "encoder.source", "train.alpha",
            "train.batch_size", "train.steps") + tuple(
            f"train.{k}" for recipe in exp["recipes"].values() for k in recipe)))))
    return with_resources(with_code_deps(out), job_resources(params))


def job_resources(params: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The params' resources section, read without recording (config.Params): the report stage
    builds this table too, and scheduling settings are none of its (or any stage's) params."""
    section = dict.__getitem__(params, "resources")
    return section.plain() if isinstance(section, Params) else section


def with_resources(stage_list: list[Stage], resources: dict[str, dict[str, int]]) -> list[Stage]:
    """Each stage with its command's resources (resources.<command>, else resources.default)."""
    return [replace(st, **resources.get(st.command, resources["default"])) for st in stage_list]


def with_code_deps(stage_list: list[Stage]) -> list[Stage]:
    """Each stage with the source files of its subcommand's module added to its deps."""
    by_module: dict[str, tuple[str, ...]] = {}
    done = []
    for st in stage_list:
        module = COMMANDS[st.command]
        if module not in by_module:
            by_module[module] = code_deps(module)
        done.append(replace(st, deps=st.deps + by_module[module]))
    return done


def lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value[part]
    return value


def leaf_keys(params: dict[str, Any], dotted: str) -> tuple[str, ...]:
    """The dotted keys of the values under `dotted` (itself when not a non-empty mapping)."""
    value = lookup(params, dotted)
    if not isinstance(value, dict) or not value:
        return (dotted,)
    return tuple(k for key in value for k in leaf_keys(params, f"{dotted}.{key}"))


def param_values(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The values a stage depends on, keyed by dotted name (Snakemake's params rerun trigger)."""
    return {k: lookup(params, k) for k in keys}


def dvc_yaml(stage_list: list[Stage], params: dict[str, Any], params_file: str = "params.yaml") -> dict[str, Any]:
    def path(p: str) -> str:
        return p.rstrip("/")

    def params_entry(keys: tuple[str, ...]) -> list[Any]:
        return list(keys) if params_file == "params.yaml" else [{params_file: list(keys)}]

    body: dict[str, Any] = {}
    for st in stage_list:
        entry: dict[str, Any] = {"cmd": st.cmd, "deps": [path(d) for d in st.deps]}
        if st.params:
            entry["params"] = params_entry(st.params)
        if st.outs or st.uncached:
            # persist: DVC would delete an uncached output before the stage runs, with no cache to
            # restore it from; the stage rewrites it atomically anyway.
            entry["outs"] = [path(o) for o in st.outs] + [{path(u): {"cache": False, "persist": True}}
                                                          for u in st.uncached]
        if st.metrics:
            entry["metrics"] = [path(m) for m in st.metrics]
        body[st.name] = entry
    # The loss files inside the model directories are declared at top level (DVC allows plots
    # inside a tracked output only there); the report's CSVs are plain outputs plotted here.
    enc = params["encoder"]["name"]
    loss = {f"models/trained/{enc}/{r.tag}/loss.csv": ["train_loss", "valid_loss"] for r in runs(params)}
    plots: list[dict[str, Any]] = [{"training loss": {"x": "step", "y": loss}}]
    if params["experiments"]["alpha_sweep"]:
        plots.append({"reports/alpha_sweep.csv": {"x": "alpha", "y": ["mo", "cr", "mul"]}})
    if params["experiments"]["data_fractions"]:
        plots.append({"reports/data_size.csv": {"x": "fraction", "y": ["mo", "cr", "mul"]}})
    if params["experiments"]["domain_sizes"]:
        plots.append({"reports/domain_size.csv": {"x": "domain_size", "y": ["mo", "cr", "mul", "nfcorpus_ndcg10"]}})
    return {"stages": body, "plots": plots}


HEADER = ("# Generated by `hybridir dvc-yaml` from src/hybridir/pipeline.py and params.yaml.\n"
          "# Do not edit: change the stage table, then regenerate (a test checks they agree).\n")


def render_dvc_yaml(params: dict[str, Any], params_file: str = "params.yaml") -> str:
    text = yaml.safe_dump(dvc_yaml(stages(params, params_file), params, params_file),
                          sort_keys=False, width=200)
    return HEADER + text


def record_dvc_lock(stage_list: list[Stage], params: dict[str, Any], params_file: str,
                    root: Path = Path(".")) -> str:
    """After a Snakemake run: record its outputs in dvc.lock (`dvc commit`), so that `dvc status` and
    `dvc repro` find nothing to do. Only stages whose outputs all exist are recorded; nothing happens
    outside a DVC repository or when dvc.yaml was generated for other params. Returns what it did."""
    if not (root / ".dvc").is_dir():
        return "not a DVC repository: dvc.lock not written"
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file() or dvc_yaml.read_text(encoding="utf-8") != render_dvc_yaml(params, params_file):
        return (f"dvc.yaml does not match {params_file}: run `hybridir dvc-yaml --params {params_file}` "
                "and `dvc commit` to record this run for DVC")
    done = [st.name for st in stage_list if all((root / o.rstrip("/")).exists() for o in st.all_outs)]
    if not done:
        return "no complete stage to record"
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "commit", "--force", *done],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode:   # the run itself succeeded: say why DVC could not record it, do not fail it
        why = (proc.stderr or proc.stdout).strip().splitlines()
        return f"dvc.lock not written: `dvc commit` failed ({why[-1] if why else proc.returncode})"
    return f"recorded {len(done)} stages in dvc.lock"


def _run(args: argparse.Namespace) -> int:
    text = render_dvc_yaml(args.params.plain(), args.params.source)
    target = Path(args.out)
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target} is out of date with the stage table; run `hybridir dvc-yaml`",
                  file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage table (or --check it)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail if the file differs from the generated one")
    p.set_defaults(func=_run)
