"""Where a model came from: the DVC hashes of every pipeline output, the git commit and the config hash.

These become the lineage tags of every registered version, so a version can be traced to the exact data,
teacher, soft-target cache, code and settings that produced it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from kd.config import Params


def dvc_hashes(root: Path) -> dict[str, str]:
    """md5 of every stage output recorded in `dvc.lock` (the data versions in the lineage tags)."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    out: dict[str, str] = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for o in stage.get("outs", []):
            out[o["path"]] = o.get("md5") or o.get("hash", "")
    return out


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def lineage(root: Path, p: Params, teacher_hash: str) -> dict[str, str]:
    """The lineage tags of a student version."""
    hashes, P = dvc_hashes(root), p.paths
    return {
        "git_commit": git_commit(root),
        "config_hash": p.section_hash(),
        "dvc.data": hashes.get(P.prepared, ""),
        "dvc.teacher": hashes.get(P.teacher, ""),
        "dvc.soft_targets": hashes.get(P.soft_targets, ""),
        "dvc.models": hashes.get(P.models, ""),
        "dvc.export": hashes.get(P.export, ""),
        "teacher_hash": teacher_hash,
        "kd.candidate": candidate_id(root, p, hashes),
    }


def candidate_id(root: Path, p: Params, hashes: dict[str, str] | None = None) -> str:
    """What a registered student is made of: its weights and its preprocessing, which the prepared data holds
    (a shift that standardisation hides gives the same weights and new means). Empty before the DVC stages ran."""
    hashes = dvc_hashes(root) if hashes is None else hashes
    models, data = hashes.get(p.paths.models, ""), hashes.get(p.paths.prepared, "")
    return f"{models}+{data}" if models and data else ""
