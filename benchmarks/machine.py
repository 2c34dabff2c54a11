"""The facts a benchmark report starts with: versions, commit, machine, run options."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any, Dict, List, Optional

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> Optional[str]:
    try:
        res = subprocess.run(
            ["git", "-C", REPO_ROOT, *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_header(args, device: torch.device, tv, argv: List[str]) -> Dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py"] + argv),
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision_version": getattr(tv, "__version__", None) if tv is not None else None,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": _device_name(device),
        "segops_commit": commit,
        "segops_dirty": bool(status) if status is not None else None,
        "threads": args.threads,
        "dtype": str(args.dtype).replace("torch.", ""),
        "quick": args.quick,
        "filter": args.filter,
        "reference": args.reference,
        "cpu_count": usable_cpus(),
        "min_run_time_s": args.min_run_time,
        "min_samples": args.min_samples,
        "single_call_s": args.single_call_s,
        "repeat_cap_s": args.repeat_cap_s,
    }
