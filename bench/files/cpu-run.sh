#!/bin/bash
# bench/files/cpu-run.sh: CPU per GiB served (bench/FILES.md).
# cpu-run.sh ROUNDS K [PATH]: each megaconn side (setup.sh's SIDES) at
# ServeDir read sizes CHUNKS (64, 16 and 256 KiB), and nginx, all up at
# once; fast.sh's interleaved rounds (K curl downloads of PATH per server
# per round), server CPU per GiB. CURL_ARGS (e.g. --http2-prior-knowledge)
# go to curl; NGINX_CLIENT_PORT=8403 for nginx's h2c port.
ROUNDS=$1; K=$2; P=${3:-/files/big1g.bin}
BIG1G=1 . "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
pids=(); servers=""
port=8420
for CHUNK in ${CHUNKS:-65536 16384 262144}; do
  for side in $SIDES; do
    port=$((port+1))
    start_side $side $port $CHUNK $WORK/cpu-$side-$CHUNK.log
    pid=$!; pids+=($pid)
    servers="$servers $side$((CHUNK/1024))K:$port:$pid"
  done
done
npid=
if [ -z "$NO_NGINX" ]; then
  "$NGINX" -c "$WORK/nginx/nginx.conf" > $WORK/nginx.log 2>&1 &
  npid=$!
  sleep 2
  servers="$servers nginx:${NGINX_CLIENT_PORT:-$NGINX_PORT}:$npid,$(pgrep -P $npid | paste -sd,)"
fi
echo "servers:$servers"
bash "$HERE/fast.sh" $ROUNDS "$servers" $P $K
for p in "${pids[@]}"; do kill -INT $p; done
[ -n "$npid" ] && kill -QUIT $npid
wait
