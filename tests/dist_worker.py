"""One rank of a distributed test run (started by tests/test_distributed.py, like torchrun would:
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

    python dist_worker.py cases OUT CASES_JSON   compress each case; every rank saves its
                                                 factors (rank 0 also the directory)
    python dist_worker.py offload OUT CASES_JSON compress_checkpoint each case (die_after: exit
                                                 after that block, to test resume)
    python dist_worker.py fail OUT MODE          MODE: raise (rank 1 raises in block 1's
                                                 statistics) | die (rank 1 exits mid-block)
"""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import svdzip as sz  # noqa: E402
from svdzip.config import CONFIGS, build_config  # noqa: E402
from tiny_models import calib, tiny  # noqa: E402


def config(spec: dict):
    spec = dict(spec)
    return build_config(spec.pop("method"), **spec)


def factors(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def run_cases(out: Path, cases: list[dict]) -> None:
    from safetensors.torch import save_file

    rank = dist.get_rank()
    for case in cases:
        model = tiny(case["arch"]).to(getattr(torch, case.get("dtype", "float32")))
        rep = sz.compress(model, config(case["config"]), calib(case["windows"]), progress=False)
        save_file(factors(model), str(out / f"{case['name']}.rank{rank}.safetensors"))
        if rank == 0:
            sz.save_compressed(model, out / case["name"], report=rep)
            (out / f"{case['name']}.report.json").write_text(json.dumps(rep.distributed))


def run_offloaded(out: Path, cases: list[dict]) -> None:
    """Each case: compress_checkpoint(case["checkpoint"], out / name); with "die_after": every
    rank exits (code 9) right after writing that block, as a killed run would."""
    from svdzip.offload import compress_checkpoint
    from svdzip.pipeline import sink

    for case in cases:
        if case.get("die_after") is not None:
            original = sink.ShardSink.write

            def write(self, i, *args, _orig=original, _at=case["die_after"], **kwargs):
                _orig(self, i, *args, **kwargs)
                if i == _at:
                    os._exit(9)
            sink.ShardSink.write = write
        rep = compress_checkpoint(case["checkpoint"], out / case["name"], config(case["config"]),
                                  calib(case["windows"]), progress=False, trial_memory=1)
        if dist.get_rank() == 0:
            (out / f"{case['name']}.report.json").write_text(json.dumps(rep.distributed))


def run_failure(out: Path, mode: str) -> None:
    from svdzip.pipeline import streams

    if dist.get_rank() == 1:
        original = streams.Streams.run

        def broken(self, layer, i, *args, **kwargs):
            if i == 1:
                if mode == "die":
                    os._exit(3)
                raise RuntimeError("injected failure in block 1")
            return original(self, layer, i, *args, **kwargs)
        streams.Streams.run = broken
    sz.compress(tiny("llama"), sz.build_config("svd_llm", ratio=0.6, sequential=True), calib(5), progress=False)


def main() -> None:
    torch.set_num_threads(1)
    what, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo", timeout=timedelta(seconds=float(os.environ.get("DIST_TIMEOUT", 60))))
    try:
        if what == "cases":
            run_cases(out, json.loads(Path(sys.argv[3]).read_text()))
        elif what == "offload":
            run_offloaded(out, json.loads(Path(sys.argv[3]).read_text()))
        else:
            run_failure(out, sys.argv[3])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
