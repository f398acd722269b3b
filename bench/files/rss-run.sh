#!/bin/bash
# bench/files/rss-run.sh: memory per slow download (bench/FILES.md).
# rss-run.sh N RATE DUR SAMPLE_AT "CHUNKS": for each ServeDir read size in
# CHUNKS, each megaconn side (setup.sh's SIDES: this checkout's serve_files
# example, and MEGACONN_REF's) and nginx, one after the other: idle RSS, then
# N slow readers of /files/big50.bin at RATE B/s for DUR s (slow.py; CLIENT=
# slowh2.py for h2c, with NGINX_CLIENT_PORT=8403), RSS sampled at SAMPLE_AT s;
# prints (RSS - idle) / N. Ports 8411, 8412, ... for the sides, 8402 nginx.
N=$1; RATE=$2; DUR=$3; AT=$4; CHUNKS=${5:-"65536 16384 262144"}
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out=$WORK/slow.out
rss() { local t=0; for p in "$@"; do r=$(awk '/VmRSS/{print $2}' /proc/$p/status); t=$((t+r)); done; echo $t; }
wait_port() { for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$1/files/index.html && return 0; sleep 0.1; done; return 1; }
one() { # name port pids...
  local name=$1 port=$2; shift 2
  sleep 1
  local idle=$(rss "$@")
  python3 "$HERE/${CLIENT:-slow.py}" $port /files/big50.bin $N $RATE $DUR > $out 2>&1 &
  local cl=$!
  sleep $AT
  local busy=$(rss "$@")
  local sock=$(awk '/^TCP:/{print $NF}' /proc/net/sockstat)
  wait $cl
  echo "chunk=$CHUNK $name idle_kB=$idle busy_kB=$busy per_download_B=$(( (busy-idle)*1024/N )) tcp_mem_pages=$sock | $(tail -1 $out)"
}
for CHUNK in $CHUNKS; do
  port=8410
  for side in $SIDES; do
    port=$((port+1))
    start_side $side $port $CHUNK $WORK/$side.log
    pid=$!
    wait_port $port || { echo "$side did not start"; kill $pid; continue; }
    one "$side" $port $pid
    kill -INT $pid; wait $pid 2>/dev/null
  done
  "$NGINX" -c "$WORK/nginx/nginx.conf" > $WORK/nginx.log 2>&1 &
  npid=$!
  wait_port $NGINX_PORT || echo "nginx did not start"
  sleep 0.5
  pids="$npid $(pgrep -P $npid | tr '\n' ' ')"
  one nginx ${NGINX_CLIENT_PORT:-$NGINX_PORT} $pids
  kill -QUIT $npid; wait $npid 2>/dev/null
done
