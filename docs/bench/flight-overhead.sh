#!/usr/bin/env bash
# Usage: docs/bench/flight-overhead.sh BIN MODE(on|small|off) DURATION
# A 3-node cluster on 127.0.0.1 (dev certificates, fsync on), the flight recorder at its
# default budget (on: 64 MiB), a small one (small: 8 MiB, so that the ring wraps) or off
# (flight_recorder_mb = 0); one closed-loop write bench; with MODE on or small, then every node's recording is requested (admin request) and replayed.
set -euo pipefail
BIN=$1; MODE=$2; DUR=$3
D=$(mktemp -d)
BASE=$((20000 + RANDOM % 10000))  # below the ephemeral range (32768-): a client socket cannot take a node's port
"$BIN" certs dev --dir "$D" --cluster bench --nodes 3 --base-port $BASE >/dev/null
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 $p 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
if [ "$MODE" = off ]; then for i in 1 2 3; do sed -i "s|^flight_recorder_mb = .*|flight_recorder_mb = 0|" "$D/node-$i.toml"; done; fi
if [ "$MODE" = small ]; then  # and snapshots every 5,000 entries, so that checkpoints fit in half of it
  for i in 1 2 3; do
    sed -i -e "s|^flight_recorder_mb = .*|flight_recorder_mb = 8|" -e "s|^snapshot_entries = .*|snapshot_entries = 5000|" \
      -e "s|^compaction_tail_entries = .*|compaction_tail_entries = 1000|" "$D/node-$i.toml"
  done
fi
grep -h -e "^flight_recorder_mb" -e "^snapshot_entries" "$D/node-1.toml"
for i in 1 2 3; do
  "$BIN" node start --config "$D/node-$i.toml" > "$D/node-$i.log" 2>&1 &
  PIDS+=($!)
done
EP="1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE+1)),3=127.0.0.1:$((BASE+2))"
export QUORATE_CERTS=$D/certs QUORATE_CLUSTER=bench QUORATE_ENDPOINTS=$EP QUORATE_TIMEOUT=10
for _ in $(seq 100); do "$BIN" kv put warm up >/dev/null 2>&1 && break; sleep 0.2; done
"$BIN" bench --clients 64 --read-ratio 0 --duration "$DUR" --value-size 256
if [ "$MODE" != off ]; then
  for i in 1 2 3; do
    "$BIN" debug flight-dump --node $i --out "$D/n$i.qflt"
    ls -l "$D/n$i.qflt" | awk '{print "bytes:", $5}'
    /usr/bin/time -f "replay %e s, %M KiB max RSS" "$BIN" replay "$D/n$i.qflt"
  done
fi
