#!/bin/bash
# What client certificates (mutual TLS) add to an idle TLS connection:
# `tls_idle_heap` (one worker, a counting allocator; with `--client-ca` it
# requires client certificates) holding N idle HTTPS/1.1 connections from
# `tls_hold` (each after one GET; with `--client-cert` presenting a
# device's certificate), MODE=off then MODE=on. Prints each run's live heap
# per connection (the allocator's count: exact, the same in debug and
# release builds) and its Δ RSS per connection.
#
#   cargo build -p megaconn --example tls_idle_heap --example tls_hold
#   N=3000 bash bench/mtls-idle-heap.sh            # (README, "Client certificates")
#
# Certificates: P-256, made by openssl in a temporary directory; the
# device's (CN=device-00042, v3, clientAuth) is 492 bytes of DER.
set -eu
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/examples}
N=${N:-3000}
PORT=${PORT:-38444}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout server-key.pem -out server.pem -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout ca-key.pem -out ca.pem -subj "/O=Fleet/CN=Devices CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout device-key.pem -out device.csr -subj "/O=Fleet/CN=device-00042" 2>/dev/null
printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:device-00042.devices.example\n" > ext.cnf
openssl x509 -req -in device.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
  -out device.pem -extfile ext.cnf 2>/dev/null
for MODE in off on; do
  PORT=$((PORT + 1))
  SARGS=(--listen 127.0.0.1:$PORT --cert server.pem --key server-key.pem)
  CARGS=(--connect 127.0.0.1:$PORT -n "$N" --concurrency 32)
  if [ "$MODE" = on ]; then
    SARGS+=(--client-ca ca.pem)
    CARGS+=(--client-cert device.pem --client-key device-key.pem)
  fi
  "$B/tls_idle_heap" "${SARGS[@]}" > server.log 2>&1 &
  SPID=$!
  sleep 1.5
  rss0=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
  "$B/tls_hold" "${CARGS[@]}" > hold.log 2>&1 &
  HPID=$!
  for _ in $(seq 1 120); do grep -q "^held" hold.log && break; sleep 1; done
  for _ in $(seq 1 60); do grep -q "open (" server.log && break; sleep 1; done
  rss1=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
  echo "client auth $MODE: $(grep '^held' hold.log); Δ RSS $(( (rss1 - rss0) * 1024 / N )) B per connection"
  grep -A10 "open (" server.log | head -11
  kill $HPID $SPID 2>/dev/null || true
  wait $HPID $SPID 2>/dev/null || true
done
