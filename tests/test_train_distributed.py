"""The training stage run as several processes (torchrun + DistributedDataParallel, gloo on CPU) and
resumed after a kill: both must end where one uninterrupted process ends."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hybridir.cli import main
from hybridir.model.encoder_dir import load_encoder, save_encoder

from pairs_fixture import build_pairs
from tiny_encoder import SPEC, TINY_TRAIN, make_tiny_encoder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train_distributed")
    pairs = build_pairs(mirror, ntrex_lines=400, tatoeba_lines=120, arcd_questions=60)
    pairs.to_parquet(d / "pairs.parquet", index=False)
    make_tiny_encoder(pairs["query"].tolist() + pairs["passage"].tolist(), d / "base")
    # float64 without dropout: one process and two compute the same function, to float64 rounding
    tokenizer, model = load_encoder(d / "base")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    save_encoder(model.double(), tokenizer, d / "base64", SPEC)
    return {"pairs": d / "pairs.parquet", "base": d / "base", "base64": d / "base64"}


def write_params(repo: Path, path: Path, **train: object) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(TINY_TRAIN | {"batch_size": 8, "valid_batches": 2, "lr": 1e-3, "warmup_ratio": 0.25,
                                         "precision": "fp32", "query_max_length": 32, "passage_max_length": 48,
                                         "freeze_embeddings": False} | train)
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def train_argv(params: Path, base: Path, files: dict[str, Path], batches: Path, out: Path) -> list[str]:
    return ["train", "--params", str(params), "--base", str(base), "--pairs", str(files["pairs"]),
            "--batches", str(batches), "--out", str(out), "--no-progress"]


def make_batches(params: Path, files: dict[str, Path], out: Path) -> Path:
    assert main(["batches", "--params", str(params), "--pairs", str(files["pairs"]), "--strategy", "hybrid",
                 "--seed", "0", "--out", str(out)]) == 0
    return out


def test_two_processes_match_one(repo: Path, files: dict[str, Path], tmp_path: Path) -> None:
    """`hybridir train` with processes: 2 (it re-launches itself under torchrun) trains like one process.

    Not bit for bit: each rank pads and reduces its own half of the batch, DDP averages the two
    gradients (gloo sums them) and the logged loss is the mean of the two halves' means, so sums run
    in another order. In float64 (unit roundoff 1.1e-16) a reordered sum of n terms moves by at most
    ~n * 1.1e-16 relative; with n <= ~1e3 here (hidden 32, <= 48 tokens, 16 candidates) that is
    ~1e-13 per step. Measured: losses within 6e-16 relative, weights (|w| <= 0.1) within 1.1e-14;
    the attention key biases, whose exact gradient is 0 (softmax ignores a shift), move by rounding
    noise alone (~1e-16), hence an absolute bound too. rtol 1e-9 / atol 1e-12 leave a wide margin,
    and a real error shows far above it: gradients not averaged over the ranks move the loss by 1e-2.
    """
    common = {"steps": 6, "valid_every": 2, "extra_negatives": 1, "checkpoint_every": 0}
    one = write_params(repo, tmp_path / "one.yaml", processes=1, **common)
    two = write_params(repo, tmp_path / "two.yaml", processes=2, **common)
    batches = make_batches(one, files, tmp_path / "batches.parquet")
    t = time.perf_counter()
    assert main(train_argv(two, files["base64"], files, batches, tmp_path / "two")) == 0
    print(f"2 processes: {time.perf_counter() - t:.1f} s")
    assert main(train_argv(one, files["base64"], files, batches, tmp_path / "one")) == 0

    log1, log2 = (pd.read_csv(tmp_path / d / "loss.csv") for d in ("one", "two"))
    assert log1["step"].tolist() == log2["step"].tolist() == list(range(7))
    for col in ("train_loss", "valid_loss", "lr"):
        pd.testing.assert_series_equal(log2[col], log1[col], rtol=1e-9, atol=0, check_exact=False)
    s1, s2 = (json.loads((tmp_path / d / "train_summary.json").read_text()) for d in ("one", "two"))
    assert (s1["world_size"], s2["world_size"]) == (1, 2)
    assert s1["best_step"] == s2["best_step"]
    w1, w2 = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    base = load_file(str(files["base64"] / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for name in w1:
        assert w1[name].dtype == torch.float64
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(w1[n], base[n]) for n in w1), "training did not move the weights"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the training process ended before it wrote a resumable state"
        assert time.monotonic() < end, f"no {path} after {timeout} s"
        time.sleep(0.01)


def test_killed_run_resumes_to_the_same_weights(repo: Path, files: dict[str, Path], tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """SIGKILL after the first resumable state; the same command then resumes at its step and ends
    bit for bit where an uninterrupted run ends (dropout on: the RNG state is part of the state)."""
    params = write_params(repo, tmp_path / "params.yaml", steps=100, valid_every=10, checkpoint_every=10)
    batches = make_batches(params, files, tmp_path / "batches.parquet")
    assert main(train_argv(params, files["base"], files, batches, tmp_path / "ref")) == 0

    out = tmp_path / "model"
    state = tmp_path / "model.resume" / "state.pt"
    argv = train_argv(params, files["base"], files, batches, out)
    proc = subprocess.Popen([sys.executable, "-m", "hybridir.cli", *argv])
    try:
        wait_for(state, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    step = torch.load(state, weights_only=True)["step"]
    assert 10 <= step < 100
    capfd.readouterr()

    assert main(argv) == 0
    assert f"resuming from {state.parent} at step {step}" in capfd.readouterr().err
    assert not state.parent.exists()
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    log, ref = pd.read_csv(out / "loss.csv"), pd.read_csv(tmp_path / "ref" / "loss.csv")
    pd.testing.assert_frame_equal(log, ref, check_exact=True)
