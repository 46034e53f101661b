#!/bin/sh
# The image's entry point. Sets QUORATE_ID (which overrides `id` in the configuration) when it
# is not set: in a StatefulSet whose pods are named `<name>-<ordinal>`, ordinal 0 is node 1.
# With QUORATE_TLS_SECRET_DIR set (a directory holding ca.crt and node-<id>.crt/.key for
# several nodes, e.g. from `quorate certs dev` or a volume), links this node's files to the
# paths the configuration names: QUORATE_TLS_DIR (default /run/quorate/tls)/ca.crt, node.crt,
# node.key; links, so that renewed files reach the node, which reloads its certificates
# without a restart. Then runs `quorate "$@"` (found in PATH: /usr/local/bin in the image).
# deploy/kubernetes/quorate.yaml needs neither: each pod sets QUORATE_ID and mounts its own
# node's Secret where the configuration reads it.
# Refuses (exit 2, a message on stderr) a QUORATE_ID that is not a node id, and a
# QUORATE_TLS_SECRET_DIR without this node's files. Tested by
# crates/quorate-node/tests/deploy.rs with a fake `quorate` in PATH.
set -eu

refuse() {
  echo "quorate-entrypoint: $*" >&2
  exit 2
}

if [ -z "${QUORATE_ID:-}" ]; then
  ordinal="${HOSTNAME:-}"
  ordinal="${ordinal##*-}"
  case "$ordinal" in
    '' | *[!0-9]*) ;;
    *)
      # Leading zeros off (the shell would read octal); at most 9 digits (no overflow).
      while [ "${#ordinal}" -gt 1 ] && [ "${ordinal#0}" != "$ordinal" ]; do ordinal="${ordinal#0}"; done
      [ "${#ordinal}" -le 9 ] || refuse "the pod ordinal in HOSTNAME=$HOSTNAME is too large"
      QUORATE_ID=$((ordinal + 1))
      export QUORATE_ID
      ;;
  esac
fi

if [ -n "${QUORATE_ID:-}" ]; then
  case "$QUORATE_ID" in
    '' | *[!0-9]* | 0*) refuse "QUORATE_ID=$QUORATE_ID is not a node id (a whole number from 1, no leading zero)" ;;
  esac
  [ "${#QUORATE_ID}" -le 18 ] || refuse "QUORATE_ID=$QUORATE_ID is too large"
fi

if [ -n "${QUORATE_TLS_SECRET_DIR:-}" ]; then
  [ -n "${QUORATE_ID:-}" ] || refuse "QUORATE_TLS_SECRET_DIR is set but the node id is not: set QUORATE_ID or run as a StatefulSet pod"
  dir="${QUORATE_TLS_DIR:-/run/quorate/tls}"
  for f in ca.crt "node-$QUORATE_ID.crt" "node-$QUORATE_ID.key"; do
    [ -r "$QUORATE_TLS_SECRET_DIR/$f" ] || refuse "$QUORATE_TLS_SECRET_DIR/$f is missing or unreadable"
  done
  mkdir -p "$dir"
  ln -sfn "$QUORATE_TLS_SECRET_DIR/ca.crt" "$dir/ca.crt"
  ln -sfn "$QUORATE_TLS_SECRET_DIR/node-$QUORATE_ID.crt" "$dir/node.crt"
  ln -sfn "$QUORATE_TLS_SECRET_DIR/node-$QUORATE_ID.key" "$dir/node.key"
fi

exec quorate "$@"
