"""The CUDA emulator (tools/cuda_emu) and the shadow comparison (tests/helpers/cuda_emu_shadow.py)
that SEGOPS_CUDA_EMU=1 runs the test suite under: the source translation, the comparison's
strictness, and (when the emulator is built) its self-test kernels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "cuda_emu"))
import build  # noqa: E402  (tools/cuda_emu/build.py)
from helpers.cuda_emu_shadow import compare  # noqa: E402


# --------------------------------------------------------------------------------------
# Translation of CUDA sources
# --------------------------------------------------------------------------------------


def test_launches_are_rewritten_with_their_configuration_and_arguments():
    src = """
    gather_kernel<T, Geom, Op<T, G>>
        <<<blocks(a), dim3(8, 4), 0, stream>>>(
            x, y);
    plain_kernel<<<1, kThreads>>>();
    scan<G><<<g, b, bytes, s>>>(a, b);
    """
    out = build.translate_kernel_source(src, sync={"scan"})
    assert "<<<" not in out and ">>>" not in out
    assert (
        "::cuda_emu::launch<false>(::cuda_emu::config(blocks(a), dim3(8, 4), 0, stream), "
        '"gather_kernel<T, Geom, Op<T, G>>", gather_kernel<T, Geom, Op<T, G>>, \n            x, y);'
        in out
    )
    assert ('::cuda_emu::launch<false>(::cuda_emu::config(1, kThreads), "plain_kernel", '
            "plain_kernel);") in out
    assert ('::cuda_emu::launch<true>(::cuda_emu::config(g, b, bytes, s), "scan<G>", scan<G>, '
            "a, b);") in out


def test_extern_shared_arrays_point_at_dynamic_shared_memory():
    out = build.translate_kernel_source("  extern __shared__ int64_t half_width[];\n", set())
    assert out == "  int64_t* half_width = static_cast<int64_t*>(::cuda_emu::dynamic_shared());\n"
    out = build.translate_kernel_source("extern __shared__ unsigned char s[];", set())
    assert out == "unsigned char* s = static_cast<unsigned char*>(::cuda_emu::dynamic_shared());"


def test_synchronising_functions_are_found_through_calls():
    src = """
    // __syncthreads() in a comment does not count
    __device__ inline int compact(int* list) { __syncthreads(); return list[0]; }
    template <typename T>
    __global__ void __launch_bounds__(256) gather(T* x) { x[0] = compact(nullptr); }
    __global__ void forward(float* x) { x[threadIdx.x] = 0; }
    struct Op { __device__ void operator()(int v) const { (void)v; } };
    __global__ void vote(unsigned* o) { o[0] = __ballot_sync(0xffffffffu, 1); }
    """
    assert build.synchronising_functions([src]) == {"compact", "gather", "vote"}


def test_the_real_kernels_that_synchronise_are_found():
    texts = [p.read_text() for p in sorted(build.CSRC.glob("*/*.cu*"))]
    sync = build.synchronising_functions(texts)
    # the kernels written with block barriers or warp votes (see csrc/<family>/*.cu)
    assert {"loop_kernel", "greedy_mask_kernel", "greedy_scan_kernel", "gather_backward_kernel",
            "multilevel_gather_kernel", "compact_rois"} <= sync
    assert "roi_align_forward_kernel" not in sync and "crop_geometry_kernel" not in sync


def test_glue_registers_for_cpu_tensors():
    text = "TORCH_LIBRARY_IMPL(segops, CUDA, m) { m.impl(\"x\", &x); }"
    assert build.translate_glue_source(text).startswith("TORCH_LIBRARY_IMPL(segops, CPU, m)")
    with pytest.raises(RuntimeError, match="without"):
        build.translate_glue_source("int x;")


# --------------------------------------------------------------------------------------
# The comparison is exact
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_compare_sees_one_ulp_and_the_sign_of_zero(dtype):
    x = torch.tensor([1.0, 0.0, float("nan")], dtype=dtype)
    compare("op", x, x.clone(), exact=True)
    ulp = x.clone()
    ulp[0] = torch.nextafter(ulp[0:1].double(), torch.tensor([2.0], dtype=torch.float64)).to(dtype)
    if ulp[0] == x[0]:  # nextafter in float64 rounds back in the half types: step the bits
        ulp = x.clone()
        ulp.view(torch.int16)[0] += 1
    with pytest.raises(AssertionError, match="differs from CPU at 1 of 3"):
        compare("op", x, ulp, exact=True)
    with pytest.raises(AssertionError, match="differs"):
        compare("op", x, torch.tensor([1.0, -0.0, float("nan")], dtype=dtype), exact=True)
    with pytest.raises(AssertionError, match="NaN positions"):
        compare("op", x, torch.tensor([1.0, 0.0, 0.0], dtype=dtype), exact=True)


def test_compare_checks_dtype_shape_and_tuples():
    x = torch.arange(4)
    compare("op", (x, [x]), (x.clone(), [x.clone()]), exact=True)
    with pytest.raises(AssertionError, match="int32"):
        compare("op", x, x.int(), exact=True)
    with pytest.raises(AssertionError, match=r"\[2, 2\]"):
        compare("op", x, x.view(2, 2), exact=True)
    with pytest.raises(AssertionError, match=r"op\[1\]"):
        compare("op", (x, x), (x, x + 1), exact=True)


def test_atomic_paths_are_compared_within_tolerance_only():
    x = torch.tensor([1.0, 2.0])
    compare("grad", x, x + 1e-7, exact=False)
    with pytest.raises(AssertionError):
        compare("grad", x, x + 1e-3, exact=False)


# --------------------------------------------------------------------------------------
# The emulator's own kernels (needs the emulator: SEGOPS_CUDA_EMU=1)
# --------------------------------------------------------------------------------------

SELFTESTS = ["barrier", "ballot", "indices", "poisoned_shared", "exited_barrier",
             "partial_warp_vote", "block_too_large", "grid_too_large"]


@pytest.fixture(scope="module")
def emulator(request):
    if not request.config.getoption("--cuda-emu"):
        pytest.skip("the CUDA emulator is built with SEGOPS_CUDA_EMU=1 (or --cuda-emu)")
    from helpers.cuda_emu_shadow import load

    return load(seed=int(os.environ.get("SEGOPS_CUDA_EMU_SEED", "0")))


@pytest.mark.parametrize("name", SELFTESTS)
def test_emulator_selftest(emulator, name):
    assert emulator.selftest(name) == ""
