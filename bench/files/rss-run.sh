#!/bin/bash
# (session 57, helper slowdl57; see bench/FILES.md)
# rss-run.sh N RATE DUR SAMPLE_AT "CHUNKS" : for each ServeDir chunk size, the
# "before" app (main), the "after" app (slowdl57) and nginx, one after the
# other (interleaved per chunk size): idle RSS, then N slow readers of
# /files/big50.bin at RATE B/s for DUR s (clients/slow.py), RSS sampled at
# SAMPLE_AT s; prints (RSS - idle) / N. Ports 8411 (before), 8412 (after),
# 8402 (nginx).
N=$1; RATE=$2; DUR=$3; AT=$4; CHUNKS=${5:-"65536 16384 262144"}
D=${D:-/work/scratch57/slowdl}  # bin/{before,after}, www/, up/, nginx/nginx.conf, clients/
rss() { local t=0; for p in "$@"; do r=$(awk '/VmRSS/{print $2}' /proc/$p/status); t=$((t+r)); done; echo $t; }
wait_port() { for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$1/files/index.html && return 0; sleep 0.1; done; return 1; }
one() { # name port pids...
  local name=$1 port=$2; shift 2
  sleep 1
  local idle=$(rss "$@")
  python3 $D/clients/${CLIENT:-slow.py} $port /files/big50.bin $N $RATE $DUR > /tmp/slowdl57-slow.out 2>&1 &
  local cl=$!
  sleep $AT
  local busy=$(rss "$@")
  local sock=$(awk '/^TCP:/{print $NF}' /proc/net/sockstat)
  wait $cl
  echo "chunk=$CHUNK $name idle_kB=$idle busy_kB=$busy per_download_B=$(( (busy-idle)*1024/N )) tcp_mem_pages=$sock | $(cat /tmp/slowdl57-slow.out | tail -1)"
}
for CHUNK in $CHUNKS; do
  for side in before after; do
    port=8411; [ $side = after ] && port=8412
    CHUNK=$CHUNK ADDR=127.0.0.1:$port ROOT=$D/www UPLOADS=$D/up RUST_LOG=warn $D/bin/$side > /tmp/slowdl57-$side.log 2>&1 &
    pid=$!
    wait_port $port || { echo "$side did not start"; kill $pid; continue; }
    one "$side" $port $pid
    kill -INT $pid; wait $pid 2>/dev/null
  done
  /usr/sbin/nginx -c $D/nginx/nginx.conf > /tmp/slowdl57-nginx.log 2>&1 &
  npid=$!
  wait_port 8402 || echo "nginx did not start"
  sleep 0.5
  pids="$npid $(pgrep -P $npid | tr '\n' ' ')"
  one nginx ${NGINX_PORT:-8402} $pids
  kill -QUIT $npid; wait $npid 2>/dev/null
done
