#!/bin/bash
# HTTP/2 streams held by clients that keep their windows shut: the server's
# Δ RSS per connection. Starts `megaconn serve` (one worker), opens CONNS h2c
# connections with SETTINGS_INITIAL_WINDOW_SIZE 0 and STREAMS `GET /` each
# (bench/h2-stall-client.py), reads VmRSS after 4 s, stops both.
# usage: bench/h2-stall-rss.sh BIN PORT CONNS STREAMS
# 2026-12-05 (branch h2edge, release build of main 2cd3441), 100 connections,
# three runs each: 250 streams 280,084-280,576 B a connection, 128 streams
# 195,338-197,754 B, none 11,304-13,885 B.
set -eu
BIN=$1; PORT=$2; C=$3; S=$4
HERE=$(dirname "$0")
"$BIN" serve --listen 127.0.0.1:"$PORT" --admin off --workers 1 --shutdown-timeout 1s > /dev/null 2>&1 &
SRV=$!
trap 'kill -TERM $SRV 2>/dev/null || true' EXIT
sleep 1.5
curl -s --http2-prior-knowledge "http://127.0.0.1:$PORT/" > /dev/null
before=$(awk '/VmRSS/{print $2}' /proc/$SRV/status)
python3 "$HERE/h2-stall-client.py" 127.0.0.1 "$PORT" "$C" "$S" 6 > /dev/null &
CL=$!
sleep 4
during=$(awk '/VmRSS/{print $2}' /proc/$SRV/status)
wait $CL
echo "conns=$C streams=$S rss_before=${before}kB rss_held=${during}kB per_conn=$(( (during - before) * 1024 / C ))B"
