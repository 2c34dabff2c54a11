"""`python -m segops`: the build facts and which ops have CPU and CUDA kernels."""

import torch

import segops
from segops import _C


def op_table() -> list[tuple[str, bool, bool]]:
    """(op, has a CPU kernel, has a CUDA kernel) for every torch.ops.segops op."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    names = sorted(
        n for n in torch._C._dispatch_get_all_op_names() if n.startswith("segops::")
    )
    return [(n.split("::", 1)[1], has(n, "CPU"), has(n, "CUDA")) for n in names]


def main() -> None:
    print(f"segops {segops.__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), running")
    built = _C.torch_version() or "unknown"
    same = built.split("+")[0] == torch.__version__.split("+")[0]
    print(f"torch {built}, compiled against{'' if same else ' (a different release)'}")
    if _C.with_cuda():
        print(f"segops CUDA: yes, CUDA {_C.cuda_version()}, archs {_C.cuda_arch_list()}")
    else:
        print("segops CUDA: no (CPU-only build)")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
    print(f"GPU: {gpu}")
    table = op_table()
    width = max([24] + [len(name) for name, _, _ in table])
    print(f"{'op':<{width}} CPU  CUDA")
    for name, cpu, cuda in table:
        print(f"{name:<{width}} {'yes' if cpu else 'no ':<4} {'yes' if cuda else 'no'}")


if __name__ == "__main__":
    main()
