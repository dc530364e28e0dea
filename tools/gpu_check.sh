#!/usr/bin/env bash
# One prepared GPU check of the shared kernels, for a session with a CUDA device:
#   1. the kernel tests, compiled Triton on CUDA in fp32/fp16/bf16 (tests/test_kernels_triton.py runs its CUDA cases
#      when a GPU is visible), plus the PyTorch-path tests;
#   2. auto dispatch: CUDA tensors go to the Triton kernels and agree with the PyTorch path;
#   3. the benchmark, CUDA section (Triton vs naive / sequential) — add "cpu" to BENCH_DEVICES for the CPU one.
# Usage (from the repository root): bash tools/gpu_check.sh [output-dir]   (default: $OUT, else ./gpu_check_out)
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"

echo "== kernel tests on CUDA" | tee "$out/tests.txt"
timeout 420 python -m pytest tests/test_kernels_triton.py tests/test_kernels_attention.py tests/test_kernels_scan.py \
    -q -k "not subprocess" -p no:cacheprovider --durations=15 2>&1 | tee -a "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== auto dispatch on CUDA" | tee "$out/dispatch.txt"
timeout 120 python - <<'PY' 2>&1 | tee -a "$out/dispatch.txt"
import torch
from pixelforge.kernels import attention, selective_scan, use_backend
from pixelforge.kernels.dispatch import resolve_backend
x = torch.zeros(1, device="cuda")
assert resolve_backend(x) == "triton", resolve_backend(x)
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(2, 4, 3, 49, 32, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
bias = torch.randn(3, 49, 49, device="cuda", generator=g)
mask = torch.where(torch.rand(4, 49, 49, device="cuda", generator=g) < 0.2, -100.0, 0.0)
out = attention(q, k, v, bias=bias, mask=mask)
with use_backend("torch"):
    ref = attention(q.float(), k.float(), v.float(), bias=bias, mask=mask)
print("attention auto(triton) bf16 vs torch fp32: max err", (out.float() - ref).abs().max().item())
b, d, n, L = 2, 96, 16, 197
u, delta, z = (torch.randn(b, d, L, device="cuda", generator=g) for _ in range(3))
A = -torch.exp(torch.log(torch.arange(1.0, n + 1, device="cuda")).repeat(d, 1))
B, C = (torch.randn(b, 1, n, L, device="cuda", generator=g) for _ in range(2))
D, db = torch.ones(d, device="cuda"), torch.full((d,), -4.0, device="cuda")
for reverse in (False, True):
    o, s = selective_scan(u, delta, A, B, C, D, z, db, True, True, reverse)
    with use_backend("torch"):
        ro, rs = selective_scan(u, delta, A, B, C, D, z, db, True, True, reverse)
    print(f"scan auto(triton) reverse={reverse}: max err out", (o - ro).abs().max().item(), "state", (s - rs).abs().max().item())
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmark" | tee "$out/bench.txt"
timeout 300 python tools/bench_kernels.py --devices ${BENCH_DEVICES:-cuda} --reps 10 2>&1 | tee -a "$out/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "gpu_check status: $status (outputs in $out)"
exit $status
