"""Which model parts live on the GPU: keep what fits, move whole models only when they do not.

Policies (`NexusGen(..., offload=...)`, `--offload` on every model command):

* ``"auto"`` (default): a part that is needed comes onto the device and stays there as long as the parts
  in use fit in `capacity_bytes` (device memory less a reserve for activations); only when a part does not
  fit are the least recently used ones moved out, whole. With enough memory (Nexus-GenV2 generate: AR
  16.6 GB + generation decoder 23.9 GB + VAE on an 80 GB card) nothing moves between requests.
* ``"none"``: every part that is used stays on the device (fails with out-of-memory if they do not fit).
* ``"model"``: one big part at a time (upstream's CPU offload): the others wait in pinned host memory.

Moves: a part's host tensors (memory-mapped safetensors, or a pinned copy once the part has had to leave
the device) are kept; moving in copies them with ``non_blocking`` copies (asynchronous from pinned
memory), moving out just points the parameters back at the host tensors -- inference weights never
change, so nothing is copied back. `prefetch` starts a part's transfer on a side stream while the current
work runs, when the part fits next to what is resident. On the CPU (the device is the host) nothing moves.

`ResidencyPlanner` holds the decisions alone (byte counts in, moves out), so they can be tested and
costed without a GPU (`nexusgen bench gpu` computes bytes moved per request with it).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from nexusgen.models.memory import is_on, parameter_bytes

POLICIES = ("auto", "none", "model")
GIB = 2**30


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"offload must be one of {POLICIES}, got {policy!r}")
    return policy


def device_capacity(device: torch.device, reserve_bytes: int | None = None) -> int | None:
    """Bytes the resident parts may take on `device`: total memory less a reserve for activations
    (default max(6 GiB, 10 %): a 1024^2 DiT step and the VAE decode need a few GB). None off CUDA."""
    if device.type != "cuda":
        return None
    return capacity_for(torch.cuda.get_device_properties(device).total_memory, reserve_bytes)


def capacity_for(total_bytes: int, reserve_bytes: int | None = None) -> int:
    """`device_capacity` of a card with `total_bytes` of memory (the one place the reserve rule lives)."""
    reserve = max(6 * GIB, total_bytes // 10) if reserve_bytes is None else reserve_bytes
    return max(total_bytes - reserve, 0)


@dataclass
class Plan:
    """What to do for one activation: parts to move out (in this order), and whether to move the part in."""

    evict: list[str] = field(default_factory=list)
    move_in: bool = True


class ResidencyPlanner:
    """The residency decisions over part names and byte counts (no tensors).

    Args:
        policy: "auto", "none" or "model".
        capacity_bytes: what resident parts may take; None: unlimited ("auto" then keeps everything).
    """

    def __init__(self, policy: str = "auto", capacity_bytes: int | None = None):
        self.policy = check_policy(policy)
        self.capacity = capacity_bytes
        self.resident: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self.permanent: set[str] = set()
        self.moved_in_bytes = 0
        self.moves: list[tuple[str, str, int]] = []  # ("in" | "out", name, bytes)

    def resident_bytes(self) -> int:
        return sum(self.resident.values())

    def fits(self, nbytes: int, also: int = 0) -> bool:
        """Whether `nbytes` more (plus `also`) fit next to the resident parts."""
        return self.capacity is None or self.resident_bytes() + nbytes + also <= self.capacity

    def plan(self, name: str, nbytes: int) -> Plan:
        """Decide how to make part `name` (of `nbytes`) resident; does not record anything."""
        if name in self.resident:
            return Plan(move_in=False)
        if self.policy == "none":
            return Plan()
        candidates = [n for n in self.resident if n not in self.permanent]
        if self.policy == "model":
            return Plan(evict=candidates)
        evict, freed = [], 0
        for other in candidates:  # auto: least recently used first, only as many as needed
            if self.capacity is None or self.resident_bytes() - freed + nbytes <= self.capacity:
                break
            evict.append(other)
            freed += self.resident[other]
        return Plan(evict=evict)

    def activate(self, name: str, nbytes: int, permanent: bool = False, transfer: bool = True) -> Plan:
        """Plan and record an activation (moves counted; `transfer=False`: the part is already on the device,
        e.g. built there, and only joins the residents); returns the plan to carry out."""
        plan = self.plan(name, nbytes)
        for other in plan.evict:
            self.moves.append(("out", other, self.resident.pop(other)))
        if plan.move_in:
            self.resident[name] = nbytes
            self.moved_in_bytes += nbytes if transfer else 0
            self.moves.append(("in" if transfer else "joined", name, nbytes))
        self.resident.move_to_end(name)
        if permanent:
            self.permanent.add(name)
        return plan


def bytes_moved_per_request(policy: str, capacity_bytes: int | None, parts: dict[str, int],
                            requests: list[list[str]], repeats: int = 2) -> list[int]:
    """Host-to-device bytes of each request of `requests` repeated `repeats` times (computed, no tensors).

    Args:
        policy: residency policy.
        capacity_bytes: device capacity (None: unlimited).
        parts: part name -> bytes.
        requests: each a list of the parts one request activates, in order (e.g. understand
            ["autoregressive"], generate ["autoregressive", "generation_decoder", "vae"]).

    Returns:
        bytes moved in per request, in order (the last ones are the steady state).
    """
    planner = ResidencyPlanner(policy, capacity_bytes)
    moved = []
    for _ in range(repeats):
        for request in requests:
            before = planner.moved_in_bytes
            for name in request:
                planner.activate(name, parts[name], permanent=name == "vae")
            moved.append(planner.moved_in_bytes - before)
    return moved


class Residency:
    """Carries out `ResidencyPlanner` decisions on real modules.

    Args:
        device: the compute device.
        policy: "auto", "none" or "model".
        capacity_bytes: default `device_capacity(device)`.
        host: where parts wait (the CPU).
    """

    def __init__(self, device: torch.device | str, policy: str = "auto", capacity_bytes: int | None = None,
                 host: torch.device | str = "cpu"):
        self.device, self.host = torch.device(device), torch.device(host)
        if capacity_bytes is None:
            capacity_bytes = device_capacity(self.device)
        self.planner = ResidencyPlanner(policy, capacity_bytes)
        self.modules: dict[str, nn.Module] = {}
        self.host_tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.pending: dict[str, object] = {}  # name -> CUDA event of a prefetch in flight
        self._stream = None

    @property
    def policy(self) -> str:
        return self.planner.policy

    @property
    def moves_on_host(self) -> bool:
        """True when the device is the host (CPU inference): nothing ever moves."""
        return self.device.type == self.host.type

    def activate(self, name: str, module: nn.Module, permanent: bool = False) -> nn.Module:
        """Make `module` (registered as `name`) resident, moving others out as the policy says."""
        if self.moves_on_host:
            return module
        self.modules[name] = module
        there = is_on(module, self.device)
        nbytes = self.planner.resident.get(name) or parameter_bytes(module)  # counted once, when it arrives
        plan = self.planner.activate(name, nbytes, permanent, transfer=not there)
        for other in plan.evict:
            self._move_out(other)
        if plan.move_in and not there:
            self._move_in(name, module)
        self._wait(name)
        return module

    def prefetch(self, name: str, module: nn.Module) -> bool:
        """Start moving `module` in on a side stream if it fits next to the resident parts without moving
        any out; returns whether a transfer was started (or the part is already resident)."""
        if self.moves_on_host or name in self.planner.resident:
            return name in self.planner.resident or self.moves_on_host
        nbytes = parameter_bytes(module)
        if not self.planner.fits(nbytes):
            return False
        self.modules[name] = module
        self.planner.activate(name, nbytes)
        self._move_in(name, module, asynchronous=True)
        return True

    def report(self) -> dict:
        """Policy, capacity, resident parts and bytes moved so far (for benchmarks)."""
        return {"policy": self.policy, "capacity_gb": None if self.planner.capacity is None
                else self.planner.capacity / 1e9, "resident": list(self.planner.resident),
                "bytes_moved_in": self.planner.moved_in_bytes,
                "moves": [list(m) for m in self.planner.moves]}

    # -- the moves -------------------------------------------------------------------------------------
    def _move_in(self, name: str, module: nn.Module, asynchronous: bool = False) -> None:
        host = self.host_tensors.setdefault(name, {})
        stream = self._side_stream() if asynchronous else None
        if stream is not None:  # copy only after the work queued so far: its memory may be reused here
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad():
            for key, tensor in _tensors(module):
                source = tensor.data  # the part's host tensor (memory-mapped, or pinned once it has left)
                target = torch.empty_like(source, device=self.device)  # allocated on the compute stream
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    target.copy_(source, non_blocking=True)
                _rebind(tensor, target)
                if self.policy != "none":  # a part that may leave keeps its host tensors to return to
                    host[key] = source
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
            self.pending[name] = event

    def _move_out(self, name: str) -> None:
        self._wait(name)
        host = self.host_tensors.pop(name, {})
        pin = self.device.type == "cuda"
        with torch.no_grad():
            for key, tensor in _tensors(self.modules[name]):
                source = host.get(key)
                if source is None:  # a part built on the device: its only copy is there
                    source = tensor.data.to(self.host)
                if pin and not source.is_pinned():
                    source = source.pin_memory()  # from now on moves in are asynchronous copies
                _rebind(tensor, source)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the blocks back before the next part arrives

    def _wait(self, name: str) -> None:
        event = self.pending.pop(name, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _side_stream(self):
        if self.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream


def _rebind(tensor: torch.Tensor, data: torch.Tensor) -> None:
    """Make `tensor` (a module's parameter or buffer, whose identity others hold) hold `data`, on any device."""
    try:
        tensor.data = data
    except RuntimeError:  # devices whose tensor types differ (e.g. the meta device): swap the whole tensor
        replacement = nn.Parameter(data, requires_grad=tensor.requires_grad) if isinstance(
            tensor, nn.Parameter) else data
        torch.utils.swap_tensors(tensor, replacement)


def _tensors(module: nn.Module):
    """(qualified name, parameter or buffer) of every tensor of `module`; shared tensors once."""
    seen = set()
    for key, tensor in (*module.named_parameters(remove_duplicate=False), *module.named_buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield key, tensor

