"""Distributed compression on torch.distributed (gloo, CPU): 2 and 3 ranks started by the test
(as torchrun would), every method, one-shot and sequential, three architectures: factors equal
to the one-process run within 1e-10 relative (the sums meet in another order), directories
that load to the same logits, one rank's failure ending every rank with its message, and too
few windows refused before any work."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import svdzip as sz
from svdzip.config import CONFIGS, build_config
from svdzip.pipeline.group import assign_owners, shares, stats_destinations
from svdzip.pipeline.walk import find_targets

from tiny_models import calib, tiny

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "dist_worker.py"
METHODS = sorted(CONFIGS)  # every registered method (a new one is tested here by registering it)
SENSITIVITY = dict(method="svd_llm", ratio=0.6, allocation="sensitivity", sensitivity_ratios=[0.3, 0.6, 0.9],
                   sensitivity_seqlen=16, sensitivity_windows=2)
BEST_LOSS = {**sz.config.RECIPES["best"], "ratio": 0.6, "loss_windows": 3, "loss_probe_windows": 2}
WINDOWS = 5  # 5 windows: 3 + 2 on two ranks, 2 + 2 + 1 on three (uneven shares)


def _cases(archs) -> list[dict]:
    """float64 models, so that the factors can be compared at 1e-10; one float32 case (what users
    run), compared at fp32's rounding."""
    cases = [{"name": f"{arch}-{m}-{'seq' if seq else 'oneshot'}", "arch": arch, "windows": WINDOWS,
              "dtype": "float64", "config": {"method": m, "ratio": 0.6, "sequential": seq}}
             for arch in archs for m in METHODS for seq in (False, True)
             if not (seq and m == "fwsvd")]  # FWSVD's Fisher needs the whole model: one-shot only
    cases.append({"name": "llama-sensitivity", "arch": "llama", "windows": WINDOWS, "dtype": "float64",
                  "config": SENSITIVITY})
    # 8 windows: 192 tokens, full-rank Grams for the compensated objective's solves
    cases.append({"name": "llama-best-loss", "arch": "llama", "windows": 8, "dtype": "float64",
                  "config": BEST_LOSS})
    cases.append({"name": "llama-nsvd-fp32", "arch": "llama", "windows": WINDOWS, "dtype": "float32",
                  "config": {"method": "nsvd", "ratio": 0.6, "sequential": True}})
    return cases


CASES = {world: _cases(["llama", "qwen2", "gemma3"]) for world in (2, 3)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *args, timeout: float = 300, env=None) -> list[tuple[int, str]]:
    """Start `world` ranks of dist_worker.py; (exit code, stderr) per rank. Fails the test if
    they do not all end within `timeout` seconds (then kills them)."""
    port = _free_port()
    procs = []
    for r in range(world):
        e = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **(env or {})}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=e,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((p.returncode, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{world} ranks did not finish within {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case run once per world size (one process start per rank for all of them)."""
    out = {}
    for world, cases in CASES.items():
        d = tmp_path_factory.mktemp(f"world{world}")
        spec = d / "cases.json"
        spec.write_text(json.dumps(cases))
        res = launch(world, "cases", d, spec, env={"SVDZIP_CACHE": str(d / "cache")})
        for r, (rc, err) in enumerate(res):
            assert rc == 0, f"rank {r} of {world} exited {rc}:\n{err[-3000:]}"
        out[world] = d
    return out


def _single(case: dict, tmp_path, monkeypatch):
    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path / "cache"))
    spec = dict(case["config"])
    model = tiny(case["arch"]).to(getattr(torch, case.get("dtype", "float32")))
    rep = sz.compress(model, build_config(spec.pop("method"), **spec), calib(case["windows"]), progress=False)
    return model, rep


def _sign_aligned(got: dict, ref: dict, name: str) -> torch.Tensor:
    """got[name] with each rank-1 component (A's column j with B's row j: same product) given
    the sign of the reference's; rounding can flip an SVD's choice of sign for a component."""
    base = name[:-2]
    s = torch.sign((got[base + ".A"] * ref[base + ".A"]).sum(0))
    s[s == 0] = 1
    return got[name] * (s if name.endswith(".A") else s[:, None])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("world, case", [(w, c) for w, cs in CASES.items() for c in cs],
                         ids=lambda v: v if isinstance(v, int) else v["name"])
def test_distributed_equals_one_process(runs, world, case, tmp_path, monkeypatch):
    model, rep = _single(case, tmp_path, monkeypatch)
    tol = case.get("tol") or (1e-10 if case["dtype"] == "float64" else 1e-6)  # fp32: stored factors' rounding
    d = runs[world]
    ref = {k: v for k, v in model.state_dict().items()}
    got = [load_file(str(d / f"{case['name']}.rank{r}.safetensors")) for r in range(world)]
    assert set(got[0]) == set(ref), "the same modules are low-rank"
    for name, want in ref.items():
        for r in range(1, world):  # broadcast: every rank holds the very same factors
            assert torch.equal(got[r][name], got[0][name]), f"rank {r} differs on {name}"
        mine = got[0][name]
        if name.endswith((".A", ".B")):  # a rank-1 component's sign is the SVD's own choice
            mine = _sign_aligned(got[0], ref, name)
        assert _rel(mine, want) <= tol, (name, _rel(mine, want))
    loaded = sz.load_compressed(d / case["name"])
    ids = calib(2)
    with torch.no_grad():
        a, b = loaded(ids).logits, model(ids).logits
    assert a.dtype == b.dtype and _rel(a, b) <= 10 * tol
    info = json.loads((d / f"{case['name']}.report.json").read_text())
    assert info["world"] == world and info["backend"] == "gloo"
    if case["config"]["method"] != "svd":  # rank 0 saw only its share of the windows
        assert info["comm_bytes"] > 0 and info["windows"] == [0, -(-case["windows"] // world)]


def test_owners_by_greedy_bin_packing_and_shared_inputs_copied():
    from types import SimpleNamespace as T

    # Llama-3-8B's block: gate / up / down dominate; one rank each before anything else
    d, f, kv = 4096, 14336, 1024
    block = [T(name=n, shape=s) for n, s in [("q", (d, d)), ("k", (kv, d)), ("v", (kv, d)), ("o", (d, d)),
                                              ("gate", (f, d)), ("up", (f, d)), ("down", (d, f))]]
    owners = assign_owners(block, 4)
    assert owners == assign_owners(block, 4)  # every rank computes the same map
    assert len({owners["gate"], owners["up"], owners["down"]}) == 3
    assert set(owners.values()) == {0, 1, 2, 3}
    assert set(assign_owners(block, 1).values()) == {0}
    leader = {"k": "q", "v": "q", "up": "gate"}
    dest = stats_destinations(block, leader, owners)
    assert set(dest) == {"q", "o", "gate", "down"}
    assert dest["gate"] == [owners["gate"], owners["up"]]  # reduced on gate's owner, copied to up's
    assert dest["q"][0] == owners["q"] and set(dest["q"]) == {owners[n] for n in ("q", "k", "v")}


def test_shares_are_contiguous_and_uneven_by_at_most_one():
    assert shares(5, 2) == [(0, 3), (3, 5)]
    assert shares(5, 3) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="2 calibration windows for 3 ranks"):
        shares(2, 3)


def _cases_file(tmp_path, cases) -> Path:
    p = tmp_path / "cases.json"
    p.write_text(json.dumps(cases))
    return p


def test_more_ranks_than_windows_is_refused_before_any_work(tmp_path):
    case = {"name": "few", "arch": "llama", "windows": 2, "config": {"method": "svd_llm", "ratio": 0.6}}
    res = launch(3, "cases", tmp_path, _cases_file(tmp_path, [case]), timeout=120)
    for r, (rc, err) in enumerate(res):
        assert rc != 0 and "2 calibration windows for 3 ranks" in err, (r, err[-2000:])
    assert not list(tmp_path.glob("few*.safetensors"))


def test_a_rank_raising_ends_every_rank_with_its_message(tmp_path):
    res = launch(2, "fail", tmp_path, "raise", timeout=120)
    assert res[1][0] != 0 and "injected failure in block 1" in res[1][1]
    assert res[0][0] != 0
    assert "rank 1 of 2 failed while" in res[0][1] and "injected failure in block 1" in res[0][1], res[0][1][-2000:]


def test_a_rank_dying_ends_the_others_nonzero_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    res = launch(2, "fail", tmp_path, "die", timeout=120, env={"DIST_TIMEOUT": "20"})
    assert res[1][0] == 3
    assert res[0][0] != 0, "rank 0 must not succeed when rank 1 died"
    assert time.monotonic() - t0 < 100


OFFLOAD_CONFIGS = {
    "svd_llm-seq": {"method": "svd_llm", "ratio": 0.6, "sequential": True},
    "nsvd-oneshot": {"method": "nsvd", "ratio": 0.6},
    "fwsvd": {"method": "fwsvd", "ratio": 0.6},
    "svd_llm-sensitivity": SENSITIVITY,
    "best-loss": BEST_LOSS,
}
OFFLOAD_WINDOWS = {"best-loss": 8}  # full-rank Grams for the compensated objective (see _cases)


def _tensors(path: Path) -> dict:
    from svdzip.pipeline.checkpoint import Checkpoint

    ck = Checkpoint(path)
    return {n: ck.read(n) for n in ck.files}


def test_offloaded_distributed_equals_one_process_and_resumes_identically(tmp_path, monkeypatch):
    """Out of core with 2 ranks: every rank reads the blocks from the (float64, sharded)
    checkpoint, rank 0 writes; the output equals the one-process offloaded run. A run whose
    ranks all die after block 1 resumes (each rank from its own share's saved hidden states)
    to the uninterrupted run's output, bit for bit."""
    from svdzip.offload import compress_checkpoint

    ckpt = tmp_path / "ckpt"
    tiny("llama").double().save_pretrained(ckpt, max_shard_size="40KB")
    cases = [{"name": n, "checkpoint": str(ckpt), "windows": OFFLOAD_WINDOWS.get(n, WINDOWS), "config": c}
             for n, c in OFFLOAD_CONFIGS.items()]
    out = tmp_path / "dist"
    out.mkdir()
    env = {"SVDZIP_CACHE": str(tmp_path / "cache-dist")}
    for r, (rc, err) in enumerate(launch(2, "offload", out, _cases_file(tmp_path, cases), env=env)):
        assert rc == 0, (r, err[-3000:])
    # sequential: a resume point after every block; one-shot: windows of 2 blocks (0-1, 2)
    for name in ("svd_llm-seq", "nsvd-oneshot"):
        killed = {"name": f"resumed-{name}", "checkpoint": str(ckpt), "windows": WINDOWS,
                  "config": OFFLOAD_CONFIGS[name]}
        died = launch(2, "offload", out, _cases_file(tmp_path, [{**killed, "die_after": 1}]), env=env)
        assert [rc for rc, _ in died] == [9, 9], died[0][1][-3000:]
        partial = out / f"{killed['name']}.partial"
        assert partial.is_dir() and not (out / killed["name"]).exists()
        assert json.loads((partial / ".resume" / "progress.json").read_text())["next_block"] == 2
        kept = {p.name for p in (partial / ".resume").glob("hidden-*.safetensors")}
        # each rank's share entering block 2 (and the one before: rank 0 may not have moved on yet)
        assert {"hidden-00002.rank0.safetensors", "hidden-00002.rank1.safetensors"} <= kept
        assert kept <= {f"hidden-0000{i}.rank{r}.safetensors" for i in (1, 2) for r in (0, 1)}
        for r, (rc, err) in enumerate(launch(2, "offload", out, _cases_file(tmp_path, [killed]), env=env)):
            assert rc == 0, (r, err[-3000:])
        resumed, whole = _tensors(out / killed["name"]), _tensors(out / name)
        assert set(resumed) == set(whole) and all(torch.equal(resumed[n], whole[n]) for n in whole), name

    monkeypatch.setenv("SVDZIP_CACHE", str(tmp_path / "cache-one"))
    for name, spec in OFFLOAD_CONFIGS.items():
        spec = dict(spec)
        windows = OFFLOAD_WINDOWS.get(name, WINDOWS)
        compress_checkpoint(ckpt, tmp_path / "one" / name, build_config(spec.pop("method"), **spec), calib(windows),
                            progress=False, trial_memory=1)
        got, ref = _tensors(out / name), _tensors(tmp_path / "one" / name)
        assert set(got) == set(ref), name
        for n in ref:
            mine = _sign_aligned(got, ref, n) if n.endswith((".A", ".B")) else got[n]
            assert _rel(mine, ref[n]) <= 1e-10, (name, n, _rel(mine, ref[n]))
        info = json.loads((out / f"{name}.report.json").read_text())
        assert info["world"] == 2 and info["windows"] == [0, -(-windows // 2)]


@pytest.mark.slow
def test_smollm2_two_gloo_ranks_same_perplexity_as_one_process(tmp_path):
    """The whole CLI under torchrun on the real model: 2 gloo ranks give the perplexity of 1."""
    common = ["smollm2-135m", "--method", "nsvd", "--ratio", "0.8", "--n-samples", "8", "--seqlen", "256",
              "--sequential", "--eval", "wiki,ptb", "--max-windows", "8"]
    ppl = {}
    for world in (1, 2):
        launcher = [sys.executable] if world == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // world)}
        r = subprocess.run(launcher + ["-m", "svdzip", "compress", common[0], str(tmp_path / f"o{world}"),
                                       *common[1:], "--json", str(tmp_path / f"r{world}.json")],
                           capture_output=True, text=True, timeout=1800, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        ppl[world] = json.loads((tmp_path / f"r{world}.json").read_text())["compressed_ppl"]
    for data in ("wiki", "ptb"):
        assert ppl[2][data] == pytest.approx(ppl[1][data], rel=1e-4), (data, ppl)
