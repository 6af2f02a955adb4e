import json
import os
import subprocess
import sys


def svdzip(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "svdzip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_compress_then_eval_smollm2(tmp_path):
    out, rep = tmp_path / "out", tmp_path / "report.json"
    r = svdzip("compress", "smollm2-135m", str(out), "--method", "svd_llm", "--ratio", "0.8",
               "--n-samples", "2", "--seqlen", "128", "--eval", "wiki", "--max-windows", "2",
               "--json", str(rep))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dense ppl: wiki" in r.stdout and "compressed ppl (svd_llm, ratio 0.8 kept)" in r.stdout
    res = json.loads(rep.read_text())
    assert 0.79 < res["report"]["ratio_targets"] <= 0.8
    assert res["compressed_ppl"]["wiki"] > res["dense_ppl"]["wiki"]
    r = svdzip("eval", str(out), "--data", "wiki", "--max-windows", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["ppl"]["wiki"] == \
        __import__("pytest").approx(res["compressed_ppl"]["wiki"], rel=1e-6)


def test_cli_rejects_bad_input(tmp_path):
    r = svdzip("compress", "smollm2-135m", str(tmp_path / "o"), "--ratio", "0")
    assert r.returncode != 0 and "ratio = 0.0 must be a number in (0, 1]" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr[-2000:]  # a clear message, not a crash
    r = svdzip("compress", "no-such-model", str(tmp_path / "o"), "--method", "svd")
    assert r.returncode != 0 and "neither a known model alias" in r.stderr
    r = svdzip("eval", str(tmp_path), "--data", "wiki")
    assert r.returncode != 0 and "config.json" in r.stderr


def test_cli_rejects_bad_allocation_and_device(tmp_path):
    r = svdzip("compress", "smollm2-135m", str(tmp_path / "o"), "--allocation", "last_blocks")
    assert r.returncode != 0 and "needs last_blocks=L" in r.stderr
    r = svdzip("compress", "smollm2-135m", str(tmp_path / "o"), "--allocation", "sensitivity",
               "--sensitivity-ratios", "0.5", "2")
    assert r.returncode != 0 and "sensitivity_ratios entry = 2.0" in r.stderr
    import torch

    if not torch.cuda.is_available():
        r = svdzip("eval", "smollm2-135m", "--device", "cuda")
        assert r.returncode != 0 and "torch sees no CUDA device" in r.stderr


def test_torchrun_two_ranks_gives_the_one_process_model(tmp_path):
    """`torchrun --nproc-per-node 2 -m svdzip compress ...` (gloo): rank 0 prints and saves;
    the saved model's logits equal the one-process run's up to fp32 rounding."""
    import torch

    import svdzip as sz

    common = ["smollm2-135m", "--method", "svd_llm", "--ratio", "0.97", "--n-samples", "4", "--seqlen", "64",
              "--last-blocks", "2", "--sequential"]
    one = svdzip("compress", common[0], str(tmp_path / "one"), *common[1:])
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "svdzip", "compress", common[0], str(tmp_path / "two"), *common[1:],
                          "--json", str(tmp_path / "two.json")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved to") == 1 and "distributed: 2 ranks (gloo); rank 0 ran windows [0, 2]" in two.stdout
    assert json.loads((tmp_path / "two.json").read_text())["report"]["distributed"]["world"] == 2
    a, b = sz.load_compressed(tmp_path / "one"), sz.load_compressed(tmp_path / "two")
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert float((la - lb).norm() / la.norm()) < 1e-4
