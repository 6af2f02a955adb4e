"""Where finished blocks go when compressing out of core: sharded safetensors in OUT.partial/,
plus the state needed to resume, then OUT/ appears atomically at the end.

After block i is written (and fsynced), `.resume/progress.json` is replaced atomically with:
the run's fingerprint (checkpoint, method config, calibration tokens, options), the next block,
the file holding the hidden states entering it, and the finished modules' reports. A killed run
(SIGKILL, OOM, power loss) therefore always finds a consistent state; rerunning the same command
continues from the next block, and refuses, naming what differs, when the run is not the same.
Results computed before the first block (Fisher sums, a sensitivity allocation) are kept in
`.resume/prepass/` as soon as they exist, so an interruption after them does not redo them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import torch

from ..report import ModuleReport
from . import integrity
from .group import Single
from .outdir import OutputRefused, replace_dir
from .layout import planned_block, planned_rank_map, resident_tensors
from .shards import DEFAULT_SHARD_SIZE, Entry, Plan, ShardWriter, group_entries
from .walk import by_block

STATE = ".resume"
PROGRESS = "progress.json"
PREPASS = "prepass"


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _write_json(path: Path, obj) -> None:
    """Atomically: a reader finds the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ResumeMismatch(ValueError):
    pass


class ShardSink:
    """Group 0 of the plan is everything outside the blocks; group i + 1 is block i.

    Created before the layout is known (`open(plan)` follows), so that what a run computes
    before its first block (Fisher sums, a sensitivity allocation: `remembered`) is kept in
    `.resume/prepass/` and survives an interruption too."""

    writes = True

    def __init__(self, out, fingerprint: dict, group=None, overwrite: bool = False,
                 shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        self.out, self.overwrite, self.shard_size = Path(out), overwrite, shard_size
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.state = self.partial / STATE
        self.prepass_dir = self.state / PREPASS
        self.fingerprint = fingerprint
        self.group = group or Single()
        self.start, self.modules, self._hidden_file = 0, [], None
        self.digests: dict[str, str] = {}  # output group -> digest of its bytes (rank 0)
        with self.group.agree(f"opening {self.partial}"):
            if self.group.rank == 0:
                self._open_state()
        # rank 0 owns the shards and the progress; every rank keeps its own share's hidden states
        self.start, modules, self._hidden_file = self.group.broadcast_object(
            (self.start, [dataclasses.asdict(m) for m in self.modules], self._hidden_file))
        self.modules = [ModuleReport(**{**m, "shape": tuple(m["shape"])}) for m in modules]
        self.state.mkdir(parents=True, exist_ok=True)

    def _open_state(self) -> None:
        if self.partial.exists() and not self.state.is_dir() and any(self.partial.iterdir()):
            raise OutputRefused(f"{self.partial} exists and is not an interrupted svdzip run (no {STATE}/); "
                                f"move it away: svdzip keeps its resume state under that name")
        progress = self._read_progress()
        if progress is not None:
            self._check_same_run(progress["fingerprint"])
            self.start = int(progress["next_block"])
            self.modules = [ModuleReport(**{**m, "shape": tuple(m["shape"])}) for m in progress["modules"]]
            self._hidden_file = progress["hidden"]
            self.digests = progress.get("digests", {})
        elif self.partial.exists():
            self._keep_only_prepass()  # no block finished: only a matching prepass is worth keeping
        self.prepass_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.prepass_dir / "fingerprint.json", self.fingerprint)

    def scratch(self, name: str) -> Path:
        """A rank's own directory for a pass that spills (removed by the pass, or at the end)."""
        return self.state / (name + (f"-rank{self.group.rank}" if self.group.distributed else ""))

    def prepare(self, source, targets, config) -> None:
        """The output layout, known once the ratios are: each block's tensors, planned before
        the loop (it lets go of the dense modules); everything outside the blocks written now."""
        resident = resident_tensors(source.model, source.prefixes)
        blocks = by_block(targets)
        self.rank_map = planned_rank_map(targets, config)
        self.open(Plan([group_entries(resident)] + [planned_block(layer, source.prefixes[i], blocks.get(i, []), config)
                                                    for i, layer in enumerate(source.layers)], self.shard_size))
        self.write_resident(resident)

    def params_after(self, source) -> int:
        return sum(math.prod(e.shape) for g in self.plan.groups for e in g)

    def open(self, plan: Plan) -> None:
        self.plan = plan
        with self.group.agree(f"checking the finished blocks in {self.partial}"):
            if self.group.rank == 0:
                self.writer = ShardWriter(self.partial, plan, resume=self.start > 0)
                self._check_finished()

    def _check_finished(self) -> None:
        """A resumed run trusts the blocks already written only if their bytes are the ones
        written (the digests in the progress file); SVDZIP_NO_VERIFY=1 skips the reading."""
        if self.start == 0 or integrity.skipped(None):
            return
        for g, want in sorted(self.digests.items(), key=lambda kv: int(kv[0])):
            if self.writer.digest(int(g)) != want:
                what = "the embeddings / norm / head" if g == "0" else f"block {int(g) - 1}"
                raise integrity.ChecksumMismatch(
                    f"{self.partial}: checksum mismatch in {what} written by the interrupted run; its "
                    f"files are damaged: delete {self.partial} to start over")

    def _keep_only_prepass(self) -> None:
        mark = self.prepass_dir / "fingerprint.json"
        try:
            saved = json.loads(mark.read_text()) if mark.is_file() else None
        except (OSError, ValueError):
            saved = None  # damaged: nothing of it is trusted
        if saved is not None:
            self._check_same_run(saved)  # another run's prepass is refused, as its blocks would be
        for p in [*self.partial.iterdir(), *(self.state.iterdir() if self.state.is_dir() else ())]:
            if p != self.state and not (saved is not None and p == self.prepass_dir):
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def remembered(self, name: str, compute):
        """compute() -> (json-able object, {name: tensor} or None), run once per run: a resumed
        run gets the saved result back, bit for bit, instead of recomputing it. Distributed:
        every rank runs compute() (it may hold collectives), rank 0 keeps the result and hands
        a kept one to the others."""
        meta, data = self.prepass_dir / f"{name}.json", self.prepass_dir / f"{name}.safetensors"
        kept = None
        if self.group.rank == 0 and meta.is_file():
            from safetensors.torch import load_file

            mark = self.prepass_dir / f"{name}.digest.json"
            if data.is_file() and mark.is_file() and not integrity.skipped(None) and \
                    json.loads(mark.read_text()).get("data") != integrity.file_digest(data):
                raise integrity.ChecksumMismatch(f"{data}: checksum mismatch in the {name} result kept by the "
                                                 f"interrupted run; delete {self.partial} to start over")
            kept = json.loads(meta.read_text()), (load_file(str(data)) if data.is_file() else None)
        kept = self.group.broadcast_object(kept)
        if kept is not None:
            return kept
        obj, tensors = compute()
        if self.group.rank != 0:
            return obj, tensors
        if tensors is not None:
            from safetensors.torch import save_file

            tmp = data.with_name(f".{data.name}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
            _fsync(tmp)
            tmp.replace(data)
            _write_json(self.prepass_dir / f"{name}.digest.json", {"data": integrity.file_digest(data)})
        _write_json(meta, obj)  # written last: it marks the result complete
        return obj, tensors

    def _read_progress(self) -> dict | None:
        f = self.state / PROGRESS
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ResumeMismatch(f"{f} is damaged ({exc}); delete {self.partial} to start over") from exc

    def _check_same_run(self, saved: dict) -> None:
        differ = [k for k in sorted(set(saved) | set(self.fingerprint)) if saved.get(k) != self.fingerprint.get(k)]
        if differ:
            raise ResumeMismatch(
                f"{self.partial} holds an interrupted run with a different {', '.join(differ)}; "
                f"rerun the same command to resume it, or delete {self.partial} to start over")

    def resumed_hidden(self) -> list[torch.Tensor] | None:
        """The hidden states entering block `start` saved by the interrupted run (None if new)."""
        if self.start == 0:
            return None
        if self._hidden_file is None:
            return []  # stopped after the last compressed block: no forward is left to run
        from safetensors import safe_open

        f = self.state / self._rank_file(self._hidden_file)
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            hidden = [fh.get_tensor(str(j)) for j in range(len(fh.keys()))]
        self._check_hidden(f, hidden)
        return hidden

    def _check_hidden(self, f: Path, hidden: list[torch.Tensor]) -> None:
        mark = f.with_name(f.name[:-len(".safetensors")] + ".digest.json")
        if integrity.skipped(None) or not mark.is_file():
            return
        got = integrity.bytes_digest(memoryview(h.contiguous().reshape(-1).view(torch.uint8).numpy()) for h in hidden)
        if json.loads(mark.read_text()).get("data") != got:
            raise integrity.ChecksumMismatch(f"{f}: checksum mismatch in the hidden states saved by the "
                                             f"interrupted run; delete {self.partial} to start over")

    def _rank_file(self, name: str) -> str:
        """hidden-00003.safetensors, or hidden-00003.rank1.safetensors for rank 1 of a group."""
        return name if not self.group.distributed else name.replace(".safetensors", f".rank{self.group.rank}.safetensors")

    def write_resident(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.start == 0 and self.group.rank == 0:
            self.digests["0"] = self.writer.write(0, tensors)

    def write(self, i: int, tensors: dict[str, torch.Tensor], hidden: list[torch.Tensor], modules,
              resume_point: bool = True) -> None:
        """Block i's output tensors (rank 0), every rank's hidden states entering i + 1, then
        the progress that lets a new process continue at i + 1 (rank 0, once all are written).
        `resume_point=False`: the tensors only (the hidden states in hand are not those entering
        i + 1: a window of blocks, pipeline/loop.py run_windows); a resume redoes the block."""
        name = f"hidden-{i + 1:05d}"
        with self.group.agree(f"writing block {i}"):
            if self.group.rank == 0:
                self.digests[str(i + 1)] = self.writer.write(i + 1, tensors)
            if resume_point and hidden:
                stem = self._rank_file(f"{name}.safetensors")[:-len(".safetensors")]
                entries = [Entry(str(j), h.dtype, tuple(h.shape)) for j, h in enumerate(hidden)]
                digest = ShardWriter(self.state, Plan([entries], shard_size=1 << 62, stem=stem)).write(
                    0, {str(j): h for j, h in enumerate(hidden)})
                _write_json(self.state / f"{stem}.digest.json", {"data": digest})
        if not resume_point:
            return
        current = f"{name}.safetensors" if hidden else None
        if self.group.rank == 0:
            progress = {"fingerprint": self.fingerprint, "next_block": i + 1, "hidden": current,
                        "digests": self.digests,
                        "modules": [dataclasses.asdict(m) for m in modules]}
            _write_json(self.state / PROGRESS, progress)
        # every rank passed the agreement above, so rank 0's progress names block i or i + 1:
        # in a group, files before block i can go; alone, all but the current one
        keep = {current, f"hidden-{i:05d}.safetensors"} if self.group.distributed else {current}
        keep = {self._rank_file(k) for k in keep if k}
        for old in self.state.glob(self._rank_file("hidden-*.safetensors")):
            if old.name not in keep:
                old.unlink()
                old.with_name(old.name[:-len(".safetensors")] + ".digest.json").unlink(missing_ok=True)

    def finish(self, write_extras) -> Path:
        """Index, then `write_extras(dir)` (config, tokenizer, svdzip_config.json), then the
        resume state goes and OUT.partial becomes OUT (an existing OUT is replaced only now).
        In a group, rank 0 does it and the others learn whether it worked."""
        with self.group.agree(f"finishing {self.out}"):
            if self.group.rank == 0:
                self.writer.write_index()
                write_extras(self.partial)
                shutil.rmtree(self.state)
                replace_dir(self.partial, self.out, self.overwrite)
        return self.out
