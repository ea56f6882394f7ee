#!/usr/bin/env bash
# A local Apache Kafka broker (KRaft, one combined broker+controller node on 127.0.0.1),
# built from Maven Central jars and run with Java 17. Idempotent: fetches once, formats
# storage once, starts only if not running, waits until the broker answers, stops by its pid.
#
#   scripts/kafka.sh fetch|start|stop|status|restart|logs
#
# Environment:
#   AGENTLEDGER_KAFKA_PORT   PLAINTEXT port (default 19092); the controller uses port+1
#   AGENTLEDGER_KAFKA_HOME   data, config, pid and log folder (default var/kafka)
#   KAFKA_VERSION            org.apache.kafka:kafka_2.13 version (default 4.4.0)
#   KAFKA_HEAP               JVM heap (default 512m)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
version="${KAFKA_VERSION:-4.4.0}"
port="${AGENTLEDGER_KAFKA_PORT:-19092}"
ctl_port=$((port + 1))
home="${AGENTLEDGER_KAFKA_HOME:-$root/var/kafka}"
case "$home" in /*) ;; *) home="$root/$home" ;; esac
cache="$root/.cache"
lib="$cache/kafka/$version/lib"
pidfile="$home/kafka.pid"
log="$home/kafka.log"
props="$home/server.properties"

say() { printf 'kafka.sh: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$lib/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { say "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  say "fetching org.apache.kafka:kafka_2.13:$version and its runtime dependencies from Maven Central"
  rm -rf "$lib"; mkdir -p "$lib"
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" -Dkafka.version="$version" -Dmaven.repo.local="$cache/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib"
  touch "$lib/.complete"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

configure() {
  mkdir -p "$home/data"
  cat >"$props" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=3
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=67108864
log.retention.check.interval.ms=60000
EOF
  if [ ! -f "$home/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    say "formatting storage in $home/data (cluster $cluster_id)"
    java -cp "$lib/*" kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$props" >"$home/format.log" 2>&1 \
      || { cat "$home/format.log" >&2; exit 1; }
  fi
}

wait_ready() {
  local deadline=$((SECONDS + ${1:-90}))
  while [ $SECONDS -lt $deadline ]; do
    if ! running; then say "broker exited; last lines of $log:"; tail -n 30 "$log" >&2; return 1; fi
    if grep -q "Kafka Server started" "$log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.3
  done
  say "broker not ready after ${1:-90}s; see $log"
  return 1
}

start() {
  fetch
  if running; then say "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; wait_ready; return 0; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is taken by another process; set AGENTLEDGER_KAFKA_PORT"; exit 1
  fi
  configure
  : >"$log"
  say "starting Kafka $version on 127.0.0.1:$port (data in $home/data)"
  nohup java "-Xmx${KAFKA_HEAP:-512m}" "-Xms${KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true "-Dlog4j2.configurationFile=$here/kafka/log4j2.yaml" \
    -cp "$lib/*" kafka.Kafka "$props" >>"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready
  say "ready on 127.0.0.1:$port"
}

stop() {
  if ! running; then rm -f "$pidfile"; say "not running"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then say "still running after 30s, killing"; kill -9 "$pid" || true; fi
  rm -f "$pidfile"
  say "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "running pid $(cat "$pidfile") 127.0.0.1:$port"; else echo "stopped"; exit 3; fi ;;
  logs) tail -n "${2:-50}" "$log" ;;
  *) echo "usage: $0 fetch|start|stop|restart|status|logs" >&2; exit 2 ;;
esac
