"""``oneformore info``: version, torch, and which backends this build has."""

from __future__ import annotations

import json
import platform

import torch


def register(sub) -> None:
    p = sub.add_parser("info", help="print the version, torch version and compiled backends")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def collect() -> dict:
    import oneformore
    from oneformore import _extension

    b = _extension.backends()
    return {
        "oneformore": oneformore.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "backends": {
            "cpu": True,
            "cpu_simd": b["cpu_simd"],
            "cuda": b["cuda"],
            "cuda_arch_list": b["cuda_arch_list"],
            "cuda_device_available": torch.cuda.is_available(),
        },
        "ops": b["ops"],
        "ops_missing_cuda_kernel": b["missing_cuda"] if b["cuda"] else [],
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    be = info["backends"]
    cuda = f"yes (arch {be['cuda_arch_list']})" if be["cuda"] else "no"
    print(f"oneformore {info['oneformore']}")
    print(f"torch      {info['torch']} (CUDA {info['torch_cuda'] or 'none'}), Python {info['python']}")
    print(f"backends   cpu: yes ({be['cpu_simd']})")
    print(f"           cuda: {cuda}; GPU visible now: {'yes' if be['cuda_device_available'] else 'no'}")
    print(f"ops        {len(info['ops'])}: " + ", ".join(op.split('::', 1)[1] for op in info["ops"]))
    if info["ops_missing_cuda_kernel"]:
        print("WARNING    ops without a CUDA kernel: " + ", ".join(info["ops_missing_cuda_kernel"]))
    return 0
