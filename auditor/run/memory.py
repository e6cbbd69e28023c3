"""Batch sizes from a memory budget (``--max-memory-gb``).

The budget is split between the model passes (attack and explainer batches, whose
backward pass keeps every activation, and the stacked faithfulness batches of
samples x removal steps, which are inference only) and the rows streamed through
the stages at once. The bytes one model input costs are measured, not guessed: a
probe forward on two samples sums the outputs of every module (what autograd keeps
for the backward pass). Without ``--max-memory-gb`` the budget is half the memory
available now (RAM on CPU, free device memory on CUDA), shared by the processes of
this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from attacks import CHUNK

MAX_FORWARD_BATCH = 4096  # larger inference batches cost memory and gain nothing measurable
# On CPU a pass whose activations outgrow the caches gets slower per row, not faster: measured on 2 cores
# (tabular, vit and sequence detectors, forward and forward+backward, batches 256..4096), passes of about
# 64-128 MiB of activations were within 5% of the best, and the sequence detector at 4096 rows (0.9 GiB)
# ran at half the speed. So on CPU a pass holds at most this many activation bytes.
CPU_PASS_BYTES = 128 * 2 ** 20
MAX_STREAM_ROWS = 8192  # rows per streamed chunk: what the stages hold at once does not grow with the data
BACKWARD_FACTOR = 3  # activations kept + their gradients + the input gradient, per activation byte
SHARE_OF_AVAILABLE = 0.5
CPU_DEFAULT_CAP = 2 * 2 ** 30


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    input_bytes: int  # one model input through a forward pass
    attack_batch: int  # rows per attack batch (a multiple of CHUNK)
    gradient_inputs: int  # model inputs per forward+backward (an explainer's batch x its steps)
    forward_batch: int  # model inputs per inference pass (the stacked faithfulness batches)
    stream_rows: int  # rows streamed through the stages at once (a multiple of CHUNK)

    def to_dict(self) -> dict:
        return {"budget_gb": round(self.budget_bytes / 2 ** 30, 3), "attack_batch": self.attack_batch,
                "gradient_inputs": self.gradient_inputs,
                "forward_batch": self.forward_batch, "stream_rows": self.stream_rows}


def available_bytes(device: torch.device) -> int:
    """Memory available now: free device memory on CUDA, MemAvailable (else free pages) on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2 ** 30


def default_budget(device: torch.device) -> int:
    """Half the available memory, shared by this machine's processes; on CPU at most CPU_DEFAULT_CAP
    (larger batches buy no speed there, only memory)."""
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = int(available_bytes(device) * SHARE_OF_AVAILABLE / max(1, processes))
    return share if device.type == "cuda" else min(share, CPU_DEFAULT_CAP)


def input_bytes(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every module output for one input, measured on a probe forward of ``sample`` (2 rows)."""
    total = [0]

    def count(module, inputs, output) -> None:
        for tensor in (output if isinstance(output, (tuple, list)) else [output]):
            if isinstance(tensor, torch.Tensor):
                total[0] += tensor.numel() * tensor.element_size()

    hooks = [module.register_forward_hook(count) for module in model.modules()]
    try:
        with torch.no_grad():
            model.forward_with_attention(sample) if hasattr(model, "forward_with_attention") else model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return max(1, (total[0] + sample.numel() * sample.element_size()) // len(sample))


def plan_memory(model: torch.nn.Module, sample: torch.Tensor, *, budget_gb: float | None, batch_size: int,
                per_row_bytes: int = 0) -> MemoryPlan:
    """Batch sizes within the budget; ``batch_size`` (``--batch-size``) caps the attack batch.
    ``per_row_bytes``: what the stages hold per streamed row (attributions, adversarial rows, curves)."""
    budget = int(budget_gb * 2 ** 30) if budget_gb is not None else default_budget(sample.device)
    one = input_bytes(model, sample)
    passes = budget // 2
    gradient_inputs = max(1, passes // (BACKWARD_FACTOR * one))
    forward_cap = MAX_FORWARD_BATCH
    if sample.device.type == "cpu":
        forward_cap = max(CHUNK, CPU_PASS_BYTES // one)
        gradient_inputs = min(gradient_inputs, forward_cap)
    cap = max(CHUNK, gradient_inputs // CHUNK * CHUNK)
    attack_batch = min(max(CHUNK, (batch_size + CHUNK - 1) // CHUNK * CHUNK), cap)
    forward_batch = int(max(CHUNK, min(MAX_FORWARD_BATCH, forward_cap, passes // one)))
    rows = (budget // 4) // max(1, per_row_bytes + sample[0].numel() * sample.element_size())
    stream_rows = int(max(attack_batch, min(MAX_STREAM_ROWS, rows)) // attack_batch * attack_batch)
    return MemoryPlan(budget_bytes=budget, input_bytes=one, attack_batch=int(attack_batch),
                      gradient_inputs=int(gradient_inputs),
                      forward_batch=forward_batch, stream_rows=max(attack_batch, stream_rows))
