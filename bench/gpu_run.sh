#!/usr/bin/env bash
# The GPU measurements, run on the lent GPU machine (device tool) once the onnxruntime-gpu
# wheel's chunks are parked there (../shared/tools/gpu-prepare). Carry .gpu/gpu-env.sh,
# .gpu/chunks/SHA256, .gpu/chunks/NAME, .gpu/whl/flatbuffers-*.whl, .gpu/whl312 and .gpu/minilm.
# Writes its tables under $OUT. ONLY=batching runs just the inference worker's batching gain
# (bench_batching), ONLY=model just the raw ORT tables (bench_model), ONLY=isolation just the
# realtime-vs-bulk isolation of the scheduler (bench_batching --isolation, ~2 minutes):
# device time is scarce.
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
if [[ $only == all || $only == isolation ]]; then
  # Shorter windows than the CPU defaults: at ~0.1 C realtime tasks/s a GPU gives thousands
  # of samples per second, and the whole step must stay under ~2 minutes of device time.
  python3 -m bench.bench_batching --isolation --source /tmp/minilm-src \
    --providers CUDAExecutionProvider,CPUExecutionProvider --capacity-s 3 \
    --idle-s "${IDLE_S:-15}" --loaded-s "${LOADED_S:-20}" --settle-s 3 --out "$OUT/gpu_isolation.md"
fi
