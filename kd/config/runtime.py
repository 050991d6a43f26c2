"""Params of where training runs: the device and the processes of distributed distillation. Neither
changes what is trained (a 2-process run matches a 1-process one within float tolerance, a test says how
close), so both are runtime settings: outside the config hash and DVC's params."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kd.config.base import Section


class DistributedParams(Section):
    nproc: int = Field(1, ge=1)
    """processes per machine for the soft_targets and distill stages (torch.distributed, launched by torchrun); 1: one"""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto is nccl on CUDA, gloo on CPU"""
    teacher_workers: int = Field(1, ge=1)
    """ensemble members trained at once, each in its own process, as mapped Prefect tasks on a Dask task runner"""
    dask_address: str = ""
    """a running Dask scheduler (tcp://host:8786) for those tasks; empty: a local cluster of teacher_workers"""
