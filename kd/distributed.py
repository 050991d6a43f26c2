"""Where training runs: the device, and the processes of distributed distillation (torch.distributed).

`kd stage distill` with `distributed.nproc: N > 1` relaunches itself under torchrun
(`python -m torch.distributed.run --nproc-per-node N -m kd stage distill`); each process then finds its
rank in the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR/PORT) and joins the process group.
Every rank computes the same seeded global permutation per epoch and takes its share of each global
batch (DistributedSampler's partition, kept per step so that N processes take the steps one would);
gradients are averaged by DistributedDataParallel; rank 0 alone writes checkpoints and outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    amp: str = "off"  # the `amp` setting: mixed precision of the forward passes (`autocast`)
    checkpoint_every: float = 0.0  # the `checkpoint_every` setting: seconds of training between resume checkpoints

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return amp_dtype(self.amp, self.device)

    def autocast(self):
        """torch.autocast on this device at the `amp` precision (Micikevicius et al. 2018), or no-op when off."""
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (torch.amp.GradScaler, Micikevicius et al. 2018); a pass-through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, outputs and the result."""
        return self.rank == 0

    def share(self, idx):
        """This rank's rows of a global batch: every world-th row, starting at the rank."""
        return idx[self.rank :: self.world]


def device_of(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda, but torch sees no CUDA device (torch.cuda.is_available() is False); use auto or cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the `amp` setting on `device`: auto is bf16 on a CUDA device that supports it,
    else fp16, and off (None) on the CPU; bf16 runs on either; fp16 on CUDA only."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp: fp16 needs a CUDA device, and training runs on {device.type}; use amp: bf16 (CPU autocast) or off")
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp: {amp!r}; expected auto, off, bf16 or fp16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def launched() -> bool:
    """True inside a process torchrun started (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def runtime(device: str = "auto", backend: str = "auto", amp: str = "off", checkpoint_every: float = 0.0) -> Runtime:
    """This process's rank, world size, device, mixed precision and checkpoint interval; joins the process group
    when torchrun launched it."""
    dev = device_of(device)
    amp_dtype(amp, dev)  # a precision the device cannot run is refused before any work
    if not launched():
        return Runtime(device=dev, amp=amp, checkpoint_every=checkpoint_every)
    import torch.distributed as dist

    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(chosen)
    return Runtime(dist.get_rank(), dist.get_world_size(), dev, amp, checkpoint_every)


def relaunch(stage: str, root: Path, nproc: int, args: list[str] | None = None) -> None:
    """Run `kd stage <stage>` in `nproc` processes on this machine through torchrun; raise if any fails.
    On several machines, start `torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT -m kd stage
    distill --root R` on each (README, "Distributed distillation")."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "kd", "stage", stage, "--root", str(root), *(args or [])]
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} in {nproc} processes (torchrun) failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
