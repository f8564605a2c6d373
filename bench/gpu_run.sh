#!/usr/bin/env bash
# The GPU measurements, run on the lent GPU machine (device tool) once the onnxruntime-gpu
# wheel's chunks are parked there (../shared/tools/gpu-prepare). Carry .gpu/gpu-env.sh,
# .gpu/chunks/SHA256, .gpu/chunks/NAME, .gpu/whl/flatbuffers-*.whl, .gpu/whl312 and .gpu/minilm.
# Writes its tables under $OUT. ONLY=batching runs just the inference worker's batching gain
# (bench_batching), ONLY=model just the raw ORT tables (bench_model): device time is scarce.
set -euo pipefail
source .gpu/gpu-env.sh
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl312/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m bench.gpu_source random .gpu/minilm /tmp/minilm-src
only=${ONLY:-all}
if [[ $only == all || $only == model ]]; then
  common=(--source /tmp/minilm-src --providers CUDAExecutionProvider,CPUExecutionProvider
          --batch-sizes "${BATCHES:-1,8,32,128,512}" --seq "${SEQS:-32,128}" --duration-s "${DURATION_S:-2}")
  python3 -m bench.bench_model "${common[@]}" --io-binding --out "$OUT/gpu_io_binding.md"
  python3 -m bench.bench_model "${common[@]}" --out "$OUT/gpu_plain_run.md"
fi
if [[ $only == all || $only == batching ]]; then
  python3 -m bench.bench_batching --source /tmp/minilm-src \
    --providers CUDAExecutionProvider,CPUExecutionProvider \
    --duration-s "${BATCHING_DURATION_S:-5}" --out "$OUT/gpu_batching.md"
  # The plot lands in the machine's copy of bench/plots; only $OUT comes back.
  if [[ -f bench/plots/batching_gpu.png ]]; then cp bench/plots/batching_gpu.png "$OUT/"; fi
fi
