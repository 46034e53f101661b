#!/bin/sh
# The image's entry point. In a Kubernetes StatefulSet (pod names `<name>-<ordinal>`) it
# derives the node id from the ordinal (ordinal 0 is node 1) unless QUORATE_ID is set, and
# links this node's certificate and key from the mounted Secret (`node-<id>.crt`,
# `node-<id>.key` under QUORATE_TLS_SECRET_DIR) to the paths the configuration names
# (QUORATE_TLS_DIR/node.crt and node.key): links, so that a Secret update reaches the node,
# which reloads its certificates without a restart. Then runs `quorate "$@"`.
set -eu
if [ -z "${QUORATE_ID:-}" ]; then
  ordinal="${HOSTNAME##*-}"
  case "$ordinal" in
    ''|*[!0-9]*) ;;
    *) QUORATE_ID=$((ordinal + 1)); export QUORATE_ID ;;
  esac
fi
if [ -n "${QUORATE_TLS_SECRET_DIR:-}" ] && [ -n "${QUORATE_ID:-}" ]; then
  dir="${QUORATE_TLS_DIR:-/run/quorate/tls}"
  mkdir -p "$dir"
  ln -sf "$QUORATE_TLS_SECRET_DIR/ca.crt" "$dir/ca.crt"
  ln -sf "$QUORATE_TLS_SECRET_DIR/node-$QUORATE_ID.crt" "$dir/node.crt"
  ln -sf "$QUORATE_TLS_SECRET_DIR/node-$QUORATE_ID.key" "$dir/node.key"
fi
exec /usr/local/bin/quorate "$@"
