#!/bin/bash
# Usage: docs/bench/ab-snapshot-reads.sh BIN LABEL [FILL_OPS]
# Issue 20's stall of linearizable gets after a 4 KiB put sweep (docs/benchmarks.md, "Cluster",
# "The get row after the 4 KiB sweep"). A fresh 3-node cluster (RocksDB, fsync on, mTLS) from the
# configurations in $BENCH_DIR (as ab-writes.sh; $PORTS: the three nodes' ports in those files,
# default 7001,7002,7003).
# 1. fill: 64 clients put FILL_OPS values of 4 KiB (default 99,700) over 100,000 keys; the nodes
#    take a snapshot of some 270 MB on the way (at 256 MiB of applied entries, index ~64,600);
# 2. gets: right after, 64 clients do linearizable gets of the same keys for 10 s (the get row of
#    `cargo xtask bench cluster`; the values read are the fill's 4 KiB ones).
# Meanwhile a probe does one linearizable `kv get` every 250 ms through the CLI and prints its
# latency and how many snapshot files are being written (`*.tmp` in the nodes' snapshot dirs).
# Then each node's `snapshot taken` lines. Prints `LABEL fill ...`, `LABEL gets ...` (and the get
# bench's error lines), `probe ...`.
set -u
BIN=$1; LABEL=$2; FILL=${3:-99700}
D=${BENCH_DIR:-/var/tmp/quorate-target/bench-cluster}
PORTS=${PORTS:-7001,7002,7003}
rm -rf $D/data; mkdir -p $D/data $D/logs
PIDS=()
for i in 1 2 3; do $BIN node start --config $D/node-$i.toml > $D/logs/snap-$LABEL-node-$i.log 2>&1 & PIDS+=($!); done
IFS=, read -r P1 P2 P3 <<< "$PORTS"
export QUORATE_CERTS=$D/certs QUORATE_CLUSTER=demo QUORATE_ENDPOINTS=1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3 QUORATE_TIMEOUT=30 QUORATE_USER=admin
for t in $(seq 1 60); do
  if $BIN cluster status 2>/dev/null | grep -qi leader; then break; fi; sleep 0.5
done
$BIN kv put probe probe-value > /dev/null
touch $D/probing
probe() {
  while [ -e $D/probing ]; do
    local t0 t1 rc tmp
    t0=$(date +%s%N)
    $BIN kv get probe --consistency linearizable > /dev/null 2>&1; rc=$?
    t1=$(date +%s%N)
    tmp=$(ls $D/data/node-*/store/snapshots/ 2>/dev/null | grep -c '\.tmp$')
    echo "probe at=$(date -u -d @$((t0 / 1000000000)) +%T) ms=$(( (t1 - t0) / 1000000 )) rc=$rc snapshot_tmp_files=$tmp"
    sleep 0.25
  done
}
probe > $D/probe-$LABEL.txt &
PROBE=$!
S=$(date -u +%T)
$BIN bench --clients 64 --value-size 4096 --duration 600 --read-ratio 0 --ops-max $FILL --keys 100000 --consistency linearizable > $D/fill-$LABEL.txt 2>&1
echo "$LABEL fill start=$S $(grep '^writes' $D/fill-$LABEL.txt) end=$(date -u +%T) load=$(cut -d' ' -f1-3 /proc/loadavg)"
S=$(date -u +%T)
$BIN bench --clients 64 --value-size 256 --duration 10 --read-ratio 1 --ops-max 500000 --keys 100000 --consistency linearizable > $D/gets-$LABEL.txt 2>&1
echo "$LABEL gets start=$S $(grep -E '^reads' $D/gets-$LABEL.txt) end=$(date -u +%T) load=$(cut -d' ' -f1-3 /proc/loadavg)"
grep -v -E '^(reads|writes|all) ' $D/gets-$LABEL.txt | sed "s/^/$LABEL gets: /"
# Until every node has logged a snapshot (at most 120 s more).
for t in $(seq 1 240); do
  [ "$(cat $D/logs/snap-$LABEL-node-*.log | grep -c 'snapshot taken')" -ge 3 ] && break; sleep 0.5
done
rm -f $D/probing; wait $PROBE
cat $D/probe-$LABEL.txt
grep -h "snapshot taken" $D/logs/snap-$LABEL-node-*.log
kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null
