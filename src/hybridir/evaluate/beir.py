"""English domain checks on BEIR NFCorpus and ArguAna: does multilingual training hurt English retrieval
outside the training domain?

Data: the BEIR zips fetched into data/raw (role `eval:beir-en` in sources.tsv), read in place:
`<name>/corpus.jsonl` (_id, title, text), `<name>/queries.jsonl` (_id, text), `<name>/qrels/test.tsv`
(query-id, corpus-id, score; graded 1-2 in NFCorpus, binary in ArguAna). The test queries are the
queries of qrels/test.tsv (NFCorpus 323, ArguAna 1,406); the corpus is the whole corpus.jsonl
(3,633 and 8,674 documents).

Protocol (BEIR's, as in its `EvaluateRetrieval`):
- documents are embedded as `title + " " + text` (stripped) with the model's passage prefix, queries
  with its query prefix; prefixes and pooling come from the model directory (`read_settings`, as
  `hybridir encode` does); texts are truncated at encoder.max_length tokens;
- exact inner-product search over L2-normalised vectors (cosine), top 100, ties ordered as trec_eval;
- ArguAna: a query is itself an argument in the corpus (1,298 of the 1,406), and BEIR removes a
  document whose id equals the query id from that query's ranking (`ignore_identical_ids=True`);
  we do the same, for ArguAna only;
- nDCG@10 (graded gains, trec_eval `ndcg_cut.10`) and Recall@100 with ir_measures (pytrec_eval),
  averaged over the test queries. Relevant documents missing from the corpus (5 in ArguAna) stay in
  the qrels, as in BEIR.

Quick runs: `evaluate.beir_max_queries` / `evaluate.beir_max_docs` (null = all, the default)
keep a seeded sample (data.seed) of the test queries and of the documents; every relevant document
of a kept query is kept, so a capped corpus makes the task easier and the numbers are not comparable
with full runs (the output says `subsampled: true`).

Output: one JSON file (ndcg10, recall100, sizes, settings, timings), written atomically.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..data.sources import find, load_registry, local_path
from ..errors import BadInput, MissingInput
from .search import make_pool, normalise, score_blocks, top_k

ROLE = "eval:beir-en"
DATASETS = ("nfcorpus", "arguana")
EXCLUDE_SELF = {"nfcorpus": False, "arguana": True}   # BEIR's ignore_identical_ids, per dataset
DEPTH = 100


@dataclass
class BeirData:
    name: str
    corpus: pd.DataFrame    # doc_id, text (title + " " + text)
    queries: pd.DataFrame   # qid, text -- the test queries only
    qrels: pd.DataFrame     # qid, doc_id, score (int)


def beir_zip(raw_dir: str | Path, name: str) -> Path:
    """Where the fetch stage put `<name>.zip` (sources.tsv role eval:beir-en)."""
    if name not in DATASETS:
        raise BadInput(f"unknown BEIR dataset {name!r}; one of {list(DATASETS)}")
    source = find([s for s in load_registry() if s.role == ROLE], f"/{name}.zip")
    path = local_path(raw_dir, source)
    if not path.is_file():
        raise MissingInput(f"{path} is missing; run `hybridir fetch --out {raw_dir}` first")
    return path


def _jsonl(archive: zipfile.ZipFile, member: str) -> list[dict[str, Any]]:
    try:
        raw = archive.read(member)
    except KeyError:
        raise BadInput(f"{archive.filename} has no {member}; is it a BEIR dataset zip?") from None
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def read_beir(zip_path: str | Path, split: str = "test") -> BeirData:
    """The corpus, the queries of `split` and their qrels from a BEIR zip (`<name>/...` inside)."""
    zip_path = Path(zip_path)
    name = zip_path.stem
    with zipfile.ZipFile(zip_path) as archive:
        corpus = _jsonl(archive, f"{name}/corpus.jsonl")
        queries = _jsonl(archive, f"{name}/queries.jsonl")
        try:
            qrels = pd.read_csv(io.BytesIO(archive.read(f"{name}/qrels/{split}.tsv")), sep="\t",
                                dtype={"query-id": str, "corpus-id": str, "score": np.int64})
        except KeyError:
            raise BadInput(f"{zip_path} has no {name}/qrels/{split}.tsv") from None
    docs = pd.DataFrame({"doc_id": [str(d["_id"]) for d in corpus],
                         "text": [f"{d.get('title') or ''} {d.get('text') or ''}".strip() for d in corpus]})
    qrels = qrels.rename(columns={"query-id": "qid", "corpus-id": "doc_id"})[["qid", "doc_id", "score"]]
    all_queries = pd.DataFrame({"qid": [str(q["_id"]) for q in queries],
                                "text": [str(q.get("text") or "") for q in queries]})
    test = all_queries[all_queries["qid"].isin(set(qrels["qid"]))].reset_index(drop=True)
    missing = set(qrels["qid"]) - set(test["qid"])
    if missing:
        raise BadInput(f"{zip_path}: qrels/{split}.tsv names queries missing from queries.jsonl, "
                       f"e.g. {sorted(missing)[0]!r}")
    if docs["doc_id"].duplicated().any():
        raise BadInput(f"{zip_path}: duplicate corpus id {docs['doc_id'][docs['doc_id'].duplicated()].iloc[0]!r}")
    return BeirData(name, docs, test, qrels.reset_index(drop=True))


def subsample(data: BeirData, *, max_queries: int | None, max_docs: int | None, seed: int = 0) -> BeirData:
    """A seeded sample of the test queries, and of the corpus that keeps every relevant document of
    the kept queries (plus others up to `max_docs` in all). None = no cap."""
    rng = np.random.default_rng(seed)
    queries = data.queries
    if max_queries is not None and max_queries < len(queries):
        queries = queries.iloc[np.sort(rng.choice(len(queries), max_queries, replace=False))]
    qrels = data.qrels[data.qrels["qid"].isin(set(queries["qid"]))]
    corpus = data.corpus
    if max_docs is not None and max_docs < len(corpus):
        relevant = corpus["doc_id"].isin(set(qrels["doc_id"])).to_numpy()
        others = np.flatnonzero(~relevant)
        n_more = max(0, max_docs - int(relevant.sum()))
        keep = relevant.copy()
        keep[rng.choice(others, min(n_more, len(others)), replace=False)] = True
        corpus = corpus[keep]
    return BeirData(data.name, corpus.reset_index(drop=True), queries.reset_index(drop=True),
                    qrels.reset_index(drop=True))


def retrieve(query_vectors: np.ndarray, qids: list[str], doc_vectors: np.ndarray, doc_ids: list[str], *,
             k: int = DEPTH, exclude_self: bool = False) -> dict[str, dict[str, float]]:
    """Exact cosine top-k per query: {qid: {doc_id: score}}. With `exclude_self`, a document whose id
    is the query id is removed from that query's ranking before the cut (BEIR ignore_identical_ids)."""
    pool = make_pool(np.asarray(doc_ids, dtype=str), normalise(doc_vectors))
    queries = normalise(query_vectors)
    qids = [str(q) for q in qids]
    if len(qids) != len(queries):
        raise ValueError(f"{len(qids)} query ids for {len(queries)} query vectors")
    self_col = np.full(len(qids), -1, dtype=np.int64)
    if exclude_self:
        present = np.isin(np.asarray(qids, dtype=str), pool.cids)
        self_col[present] = pool.columns(np.asarray(qids, dtype=str)[present])
    depth = min(k + int(exclude_self), len(pool))
    run: dict[str, dict[str, float]] = {}
    for rows, scores in score_blocks(queries, pool):
        cols, values = top_k(scores, depth)
        for i, (row_cols, row_values) in enumerate(zip(cols, values), start=rows.start):
            keep = row_cols != self_col[i]
            run[qids[i]] = {str(pool.cids[c]): float(s)
                            for c, s in zip(row_cols[keep][:k], row_values[keep][:k])}
    return run


def score_run(run: dict[str, dict[str, float]], qrels: pd.DataFrame) -> dict[str, float]:
    """nDCG@10 and Recall@100 (ir_measures / pytrec_eval), mean over the queries of `qrels`."""
    import ir_measures
    from ir_measures import R, nDCG

    measures = {"ndcg10": nDCG @ 10, "recall100": R @ 100}
    qrel_list = [ir_measures.Qrel(str(q), str(d), int(s))
                 for q, d, s in qrels[["qid", "doc_id", "score"]].itertuples(index=False)]
    run_list = [ir_measures.ScoredDoc(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    missing = set(qrels["qid"]) - set(run)
    if missing:
        raise ValueError(f"{len(missing)} test queries have no ranking, e.g. {sorted(missing)[0]!r}")
    per_query: dict[str, list[float]] = {name: [] for name in measures}
    names = {m: name for name, m in measures.items()}
    # pytrec_eval explicitly: trec_eval's definitions (linear graded gains in nDCG), as BEIR uses.
    for metric in ir_measures.pytrec_eval.iter_calc(list(measures.values()), qrel_list, run_list):
        per_query[names[metric.measure]].append(float(metric.value))
    # trec_eval leaves out a query with no retrieved document; there is none (every query is in the run).
    return {name: float(np.mean(values)) if values else float("nan") for name, values in per_query.items()}


def evaluate_embeddings(data: BeirData, query_vectors: np.ndarray, doc_vectors: np.ndarray,
                        *, exclude_self: bool | None = None) -> dict[str, float]:
    """Metrics of one model's embeddings of `data` (rows in data.queries / data.corpus order)."""
    exclude = EXCLUDE_SELF.get(data.name, False) if exclude_self is None else exclude_self
    run = retrieve(query_vectors, data.queries["qid"].tolist(), doc_vectors, data.corpus["doc_id"].tolist(),
                   exclude_self=exclude)
    return score_run(run, data.qrels)


def run_beir(params: dict[str, Any], raw_dir: str | Path, model_dir: str | Path, name: str,
             out: str | Path, *, progress: bool = False,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole stage: read, (sub)sample, embed, search, score; write `out` (JSON) atomically."""
    from ..model.encoder_dir import load_encoder, read_settings
    from ..model.modeling import converted_cache, encode_placement, encode_texts
    from .encode import encode_unique

    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    ev = params["evaluate"]
    max_queries, max_docs = ev["beir_max_queries"], ev["beir_max_docs"]
    data = read_beir(beir_zip(raw_dir, name))
    full_sizes = (len(data.queries), len(data.corpus))
    data = subsample(data, max_queries=max_queries, max_docs=max_docs, seed=int(params["data"]["seed"]))
    settings = read_settings(model_dir)
    tokenizer, model = load_encoder(model_dir)
    precision, device = encode_placement(ev["precision"])
    model = model.to(device).eval()
    cache = converted_cache(model_dir, precision, device)   # shared with this model's encode stages

    def embed(texts: list[str], prefix: str) -> np.ndarray:
        return encode_unique(texts, lambda unique: encode_texts(
            model, tokenizer, unique, prefix=prefix, pooling=settings["pooling"],
            max_length=params["encoder"]["max_length"], batch_size=ev["batch_size"],
            precision=precision, progress=progress, cache=cache,
            split=int(params["train"]["freeze_layers"])))   # layers shared with the base (modeling.lower_states)

    t0 = time.perf_counter()
    q_vectors = embed(data.queries["text"].tolist(), settings["query_prefix"])
    t_queries = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_vectors = embed(data.corpus["text"].tolist(), settings["passage_prefix"])
    t_docs = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = evaluate_embeddings(data, q_vectors, d_vectors)
    t_search = time.perf_counter() - t0
    body = {
        "dataset": name, "split": "test", **scores,
        "n_queries": len(data.queries), "n_docs": len(data.corpus),
        "subsampled": (len(data.queries), len(data.corpus)) != full_sizes,
        "exclude_self": EXCLUDE_SELF[name], "depth": DEPTH,
        "model": str(model_dir), **settings, "max_length": params["encoder"]["max_length"],
        "precision": precision, "device": device,
        "encode_queries_s": round(t_queries, 2), "encode_docs_s": round(t_docs, 2),
        "search_and_metrics_s": round(t_search, 2), "total_s": round(time.perf_counter() - t_start, 2),
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    log(f"beir {name}: nDCG@10 {scores['ndcg10']:.4f}, R@100 {scores['recall100']:.4f} "
        f"({len(data.queries)} queries, {len(data.corpus)} docs, {body['total_s']}s) -> {out}")
    return body


def _run(args: argparse.Namespace) -> int:
    params = args.params
    run_beir(params, args.raw, args.model, args.dataset, args.out, progress=not args.quiet,
             log=lambda msg: print(msg, file=sys.stderr))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("beir", help="English domain check: nDCG@10 / R@100 on a BEIR dataset")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--raw", default="data/raw", help="fetch-stage directory holding the BEIR zips")
    p.add_argument("--model", required=True, help="encoder directory (models/base/<name> or a trained one)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--out", required=True, help="output JSON (results/<encoder>/<tag>/beir/<dataset>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
