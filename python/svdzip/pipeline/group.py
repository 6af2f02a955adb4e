"""Who sees which windows and who decomposes which module: the block loop's `group` part.

`Single` is one process: every window and every module are its own, and nothing is
communicated. `Distributed` runs on a torch.distributed process group (gloo or nccl, started by
torchrun or by the caller): the calibration windows are split into contiguous shares, one per
rank; a block's statistics (all sums, and a max for max|x|) are reduced to the owner of each
module (owners chosen by greedy bin-packing on the decomposition cost; the owner of a module
that shares its input with another owner's module gets a copy); the owner decomposes and
broadcasts the stored factors; every rank swaps them in and propagates its own share. Every collective of a block is reached by every rank in the same order, and work
that can fail runs inside `agree(...)`, so one rank's error ends every rank with that rank's
message instead of leaving the others waiting; a rank that dies outright ends the others at the
process group's timeout.
"""

from __future__ import annotations

import contextlib
import heapq
import time

import torch


class RankFailed(RuntimeError):
    """Raised on every other rank when one rank fails: names that rank and its message."""


def decompose_cost(shape: tuple[int, int]) -> float:
    """Relative FLOPs of one module's decomposition on its owner: its SVD (~14·m·n·min(m, n),
    the leading term of LAPACK's gesdd) and the weighting the owner prepares for it (Cholesky or
    eigendecomposition of the n x n Gram, ~n³)."""
    m, n = shape
    return 14.0 * m * n * min(m, n) + float(n) ** 3


def assign_owners(targets, world: int) -> dict[str, int]:
    """{module: rank} by greedy bin-packing: the costliest module goes to the least loaded rank
    (ties: the lower rank, then the earlier module), so every rank computes the same map.
    Modules, not shared-input groups, are the unit: Llama-3-8B's gate and up projections are
    55 % of a block's decomposition, and one owner for both would cap the block's speed-up
    at 1.8x whatever the number of ranks."""
    order = sorted(range(len(targets)), key=lambda j: (-decompose_cost(targets[j].shape), j))
    load = [(0.0, r) for r in range(world)]
    owners = {}
    for j in order:
        used, r = heapq.heappop(load)
        owners[targets[j].name] = r
        heapq.heappush(load, (used + decompose_cost(targets[j].shape), r))
    return owners


def stats_destinations(targets, leader_of: dict[str, str], owner_of: dict[str, int]) -> dict[str, list[int]]:
    """{leader: ranks that need its statistics}: the owner of its first module (where the sums
    are reduced), then the other owners of modules sharing that input (they get a copy)."""
    need: dict[str, list[int]] = {}
    for t in targets:
        ranks = need.setdefault(leader_of.get(t.name, t.name), [])
        if owner_of[t.name] not in ranks:
            ranks.append(owner_of[t.name])
    return need


def shares(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) window ranges, sizes differing by at most one."""
    if n < world:
        raise ValueError(f"{n} calibration windows for {world} ranks: every rank needs at least one "
                         f"window (use --n-samples >= {world} or fewer processes)")
    base, extra = divmod(n, world)
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (r < extra))
    return list(zip(bounds, bounds[1:]))


class Single:
    """One process: the trivial group."""
    rank, world, distributed = 0, 1, False

    def __init__(self) -> None:
        self.comm_seconds, self.comm_bytes = 0.0, 0

    def share(self, n: int) -> slice:
        return slice(0, n)

    @contextlib.contextmanager
    def agree(self, what: str):
        yield

    def owners(self, targets) -> dict[str, int]:
        return {t.name: 0 for t in targets}

    def reduce_stats(self, raw: dict[str, dict], destinations: dict[str, list[int]]) -> None:
        pass

    def all_reduce_stats(self, raw: dict[str, dict]) -> None:
        pass

    def broadcast_(self, tensor: torch.Tensor, src: int) -> None:
        pass

    def gather_objects(self, obj) -> list:
        return [obj]

    def broadcast_object(self, obj, src: int = 0):
        return obj

    def summary(self) -> dict | None:
        return None


SUM_KEYS = ("tokens", "gram", "cross", "abs_sum", "fisher")
MAX_KEYS = ("abs_max",)


class Distributed(Single):
    """A torch.distributed process group (default: the world)."""
    distributed = True

    def __init__(self, process_group=None) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("Distributed needs an initialised torch.distributed process group "
                               "(torchrun sets one up; or call torch.distributed.init_process_group)")
        super().__init__()
        self.dist, self.pg = dist, process_group
        self.rank = dist.get_rank(process_group)
        self.world = dist.get_world_size(process_group)
        self.backend = dist.get_backend(process_group)
        self.windows: list[int] | None = None  # this rank's share of the calibration, once split

    # --- data ---------------------------------------------------------------------------
    def share(self, n: int) -> slice:
        start, stop = shares(n, self.world)[self.rank]
        self.windows = [start, stop]
        return slice(start, stop)

    # --- failure ------------------------------------------------------------------------
    @contextlib.contextmanager
    def agree(self, what: str):
        """Run the body; then every rank learns whether any rank failed in it. The failing rank
        re-raises its own exception, the others raise RankFailed naming it and its message."""
        error = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - handed to every rank, then re-raised
            error = e
        said = self.gather_objects(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(said) if m is not None]
        if failed:
            r, m = failed[0]
            raise RankFailed(f"rank {r} of {self.world} failed while {what}: {m}")

    # --- collectives --------------------------------------------------------------------
    def _timed(self, fn, nbytes: int = 0):
        t0 = time.perf_counter()
        out = fn()
        self.comm_seconds += time.perf_counter() - t0
        self.comm_bytes += nbytes
        return out

    def owners(self, targets) -> dict[str, int]:
        return assign_owners(targets, self.world)

    @contextlib.contextmanager
    def _reducible(self, st: dict):
        """[(tensor, reduce op)] for one statistics dict: the sums and max|x|, and the token
        count as a tensor for the time of the collectives (an int again afterwards)."""
        st["tokens"] = torch.tensor(st["tokens"], dtype=torch.int64, device=st_device(st))
        try:
            yield [(st[k], self.dist.ReduceOp.MAX if k in MAX_KEYS else self.dist.ReduceOp.SUM)
                   for k in SUM_KEYS + MAX_KEYS if k in st]
        finally:
            st["tokens"] = int(st["tokens"])

    def reduce_stats(self, raw: dict[str, dict], destinations: dict[str, list[int]]) -> None:
        """Sum (max for max|x|) each leader's statistics onto the first rank that needs them, in
        a fixed order, and send that rank's result to the others that need them; the ranks that
        need none drop them."""
        for leader, ranks in destinations.items():
            home = ranks[0]
            with self._reducible(raw[leader]) as tensors:
                for t, op in tensors:
                    nbytes = t.numel() * t.element_size()
                    self._timed(lambda: self.dist.reduce(t, op=op, group=self.pg, group_dst=home), nbytes)
                    for r in ranks[1:]:
                        if self.rank == home:
                            self._timed(lambda: self.dist.send(t, group=self.pg, group_dst=r), nbytes)
                        elif self.rank == r:
                            self._timed(lambda: self.dist.recv(t, group=self.pg, group_src=home), nbytes)
            if self.rank not in ranks:
                raw[leader] = None

    def all_reduce_stats(self, raw: dict[str, dict]) -> None:
        """Every statistics dict summed (max for max|x|) onto every rank, in place and in the
        dict's order (the trials' statistics; FWSVD's Fisher sums)."""
        for st in raw.values():
            with self._reducible(st) as tensors:
                for t, op in tensors:
                    self._timed(lambda: self.dist.all_reduce(t, op=op, group=self.pg), t.numel() * t.element_size())

    def broadcast_(self, tensor: torch.Tensor, src: int) -> None:
        self._timed(lambda: self.dist.broadcast(tensor, group=self.pg, group_src=src),
                    tensor.numel() * tensor.element_size())

    def gather_objects(self, obj) -> list:
        out = [None] * self.world
        self._timed(lambda: self.dist.all_gather_object(out, obj, group=self.pg))
        return out

    def broadcast_object(self, obj, src: int = 0):
        box = [obj]
        self._timed(lambda: self.dist.broadcast_object_list(box, group=self.pg, group_src=src))
        return box[0]

    def summary(self) -> dict:
        return {"world": self.world, "rank": self.rank, "backend": self.backend, "windows": self.windows,
                "comm_seconds": self.comm_seconds, "comm_bytes": self.comm_bytes}


def st_device(st: dict):
    for v in st.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return "cpu"


def from_environment(process_group=None):
    """The group to use: `process_group` if given, the initialised default group if there is
    one with more than one rank, else Single."""
    import torch.distributed as dist

    if process_group is not None:
        return Distributed(process_group)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Distributed()
    return Single()


def launched_by_torchrun() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(backend: str = "auto", timeout_s: float = 1800.0, device=None):
    """(group, device) for a command started by torchrun (WORLD_SIZE > 1 in the environment):
    initialises the process group (nccl when `device` is CUDA and every rank has a GPU, else
    gloo; `backend` overrides), gives each rank its local GPU, and tears the group down at the
    end. Without torchrun: (Single(), device)."""
    import datetime
    import os

    import torch.distributed as dist

    if not launched_by_torchrun():
        yield Single(), device
        return
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"--backend {backend!r} must be auto, gloo or nccl")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("--backend nccl needs --device cuda (nccl communicates GPU tensors)")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    try:
        yield Distributed(), device
    finally:
        dist.destroy_process_group()
