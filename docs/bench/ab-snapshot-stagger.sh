#!/bin/bash
# Usage: docs/bench/ab-snapshot-stagger.sh BIN LABEL E1,E2,E3 [SECONDS]
# Issue 20: do three nodes that write their state-machine snapshots at once (same threshold,
# same entries) slow 4 KiB puts at 256 clients? A fresh 3-node cluster (RocksDB, fsync on,
# mTLS) from the configurations `cargo xtask bench cluster` wrote in $BENCH_DIR (default
# /var/tmp/quorate-target/bench-cluster), copied to $BENCH_DIR-ab with each node's
# `raft.snapshot_entries` set to E1, E2, E3; then `quorate bench --clients 256 --value-size 4096
# --read-ratio 0` for SECONDS (default 30). Prints `LABEL E1,E2,E3 writes ...`, the nodes'
# `snapshot taken` lines and the load.
set -u
BIN=$1; LABEL=$2; ENTRIES=$3; SECS=${4:-30}
SRC=${BENCH_DIR:-/var/tmp/quorate-target/bench-cluster}
D=$SRC-ab
rm -rf "$D"; mkdir -p "$D/data" "$D/logs"; cp -r "$SRC/certs" "$D/"
IFS=, read -r E1 E2 E3 <<< "$ENTRIES"
E=("" "$E1" "$E2" "$E3")
PIDS=()
for i in 1 2 3; do
  sed -e "s|$SRC/|$D/|g" -e "s|^snapshot_entries = .*|snapshot_entries = ${E[$i]}|" "$SRC/node-$i.toml" > "$D/node-$i.toml"
  $BIN node start --config "$D/node-$i.toml" > "$D/logs/node-$i.log" 2>&1 & PIDS+=($!)
done
export QUORATE_CERTS=$D/certs QUORATE_CLUSTER=demo QUORATE_ENDPOINTS=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 QUORATE_TIMEOUT=30 QUORATE_USER=admin
for t in $(seq 1 60); do
  if $BIN cluster status 2>/dev/null | grep -qi leader; then break; fi; sleep 0.5
done
S=$(date -u +%T)
$BIN bench --clients 256 --value-size 4096 --duration "$SECS" --read-ratio 0 --ops-max 5000000 --keys 100000 --consistency linearizable > "$D/bench.txt" 2>&1
echo "$LABEL $ENTRIES start=$S $(grep '^writes' "$D/bench.txt") end=$(date -u +%T) load=$(cut -d' ' -f1-3 /proc/loadavg)"
grep -h "snapshot taken" "$D"/logs/node-*.log | sed "s/^/$LABEL /"
kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null
