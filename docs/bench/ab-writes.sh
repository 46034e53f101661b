#!/bin/bash
# Usage: docs/bench/ab-writes.sh BIN LABEL DURATION CLIENTS...
# One line per client count: LABEL clients=C <quorate bench line> cpu_ticks= us_per_write= apply_us_per_write= per_node= load= at=
# A fresh 3-node cluster (RocksDB, fsync on, mTLS) from the configurations `cargo xtask bench cluster`
# leaves in $BENCH_DIR (default /var/tmp/quorate-target/bench-cluster); puts of 256 B over 100,000 keys.
# CPU: user+system ticks of the three node processes, and of their `quorate-apply` threads alone.
set -u
BIN=$1; LABEL=$2; DUR=$3; shift 3
D=${BENCH_DIR:-/var/tmp/quorate-target/bench-cluster}
rm -rf $D/data; mkdir -p $D/data $D/logs
PIDS=()
for i in 1 2 3; do $BIN node start --config $D/node-$i.toml >> $D/logs/ab-node-$i.log 2>&1 & PIDS+=($!); done
export QUORATE_CERTS=$D/certs QUORATE_CLUSTER=demo QUORATE_ENDPOINTS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 QUORATE_TIMEOUT=5 QUORATE_USER=admin
for t in $(seq 1 60); do
  if $BIN cluster status 2>/dev/null | grep -qi leader; then break; fi; sleep 0.5
done
apply_ticks() { local s=0; for p in "${PIDS[@]}"; do for t in /proc/$p/task/*; do if grep -q "^quorate-apply" $t/comm 2>/dev/null; then set -- $(cut -d' ' -f14,15 $t/stat); s=$(( s + $1 + $2 )); fi; done; done; echo $s; }
ticks() { local s=0; for p in "${PIDS[@]}"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); s="$s $(( $1 + $2 ))"; done; echo $s; }
for C in "$@"; do
  B=($(ticks)); BA=$(apply_ticks)
  OUT=$($BIN bench --clients $C --value-size 256 --duration $DUR --read-ratio 0 --ops-max 500000 --keys 100000 --consistency linearizable 2>&1 | grep "^writes")
  A=($(ticks)); AA=$(apply_ticks)
  N=$(echo "$OUT" | sed -E 's/^writes ([0-9]+) ops.*/\1/')
  T=$(( (A[1]-B[1]) + (A[2]-B[2]) + (A[3]-B[3]) ))
  HZ=$(getconf CLK_TCK)
  US=$(python3 -c "print(round($T/$HZ*1e6/max($N,1),1))")
  UA=$(python3 -c "print(round(($AA-$BA)/$HZ*1e6/max($N,1),1))")
  echo "$LABEL clients=$C $OUT cpu_ticks=$T us_per_write=$US apply_us_per_write=$UA per_node=$((A[1]-B[1]))/$((A[2]-B[2]))/$((A[3]-B[3])) load=$(cut -d' ' -f1-3 /proc/loadavg) at=$(date -u +%T)"
done
kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null
