#!/bin/bash
# Starts a KRaft broker configured as apache/kafka configures one from its environment:
# KAFKA_FOO_BAR=x becomes foo.bar=x ("__" stands for "_", "___" for "-"); the storage is
# formatted on first start with CLUSTER_ID (the official image's default id when unset).
set -euo pipefail

properties=/opt/kafka/config/server.properties
# The official image's variables that configure the JVM, not the broker.
jvm_variables=" KAFKA_HEAP_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_OPTS KAFKA_LOG4J_OPTS KAFKA_GC_LOG_OPTS KAFKA_JMX_OPTS KAFKA_DEBUG KAFKA_VERSION KAFKA_HOME "
: >"$properties"
for name in $(compgen -e | grep '^KAFKA_' || true); do
  [[ $jvm_variables == *" $name "* ]] && continue
  key=${name#KAFKA_}
  key=${key,,}
  key=${key//___/-}
  key=${key//__/@}
  key=${key//_/.}
  key=${key//@/_}
  printf '%s=%s\n' "$key" "${!name}" >>"$properties"
done
grep -q '^log\.dirs=' "$properties" || echo "log.dirs=/var/lib/kafka/data" >>"$properties"

classpath='/opt/kafka/libs/*'
log4j="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties"
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
log_dir=$(sed -n 's/^log\.dirs=//p' "$properties" | cut -d, -f1)
if [ ! -f "$log_dir/meta.properties" ]; then
  java "$log4j" -cp "$classpath" kafka.tools.StorageTool format \
    "--cluster-id=${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$properties"
fi
# The JVM's flags from KAFKA_JVM_PERFORMANCE_OPTS, as the official image reads them. By default
# G1, and on up to 4 cores the client compiler only, as the native stack's `stack.kafka_jit`
# auto picks: the optimizing compiler's threads take a small machine's cores from the
# pipeline for minutes after a start (BENCHMARKS, "The broker's JIT on 2 cores").
jvm_default="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true"
if [ "$(nproc)" -le 4 ]; then
  jvm_default+=" -XX:TieredStopAtLevel=1"
fi
read -r -a jvm <<<"${KAFKA_JVM_PERFORMANCE_OPTS:-$jvm_default}"
read -r -a extra <<<"${KAFKA_OPTS:-}"
exec java "${heap[@]}" "${jvm[@]}" "${extra[@]}" "$log4j" -cp "$classpath" kafka.Kafka "$properties"
