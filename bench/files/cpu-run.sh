#!/bin/bash
# (session 57, helper slowdl57; see bench/FILES.md)
# cpu-run.sh ROUNDS K [PATH]: the before (main) and after (slowdl57) apps at
# ServeDir chunks of 64, 16 and 256 KiB, and nginx, all up at once;
# clients/fast.sh's interleaved rounds (K curl downloads of PATH per server
# per round), server CPU per GiB.
ROUNDS=$1; K=$2; P=${3:-/files/big1g.bin}
D=${D:-/work/scratch57/slowdl}  # bin/{before,after}, www/, up/, nginx/nginx.conf, clients/
pids=(); servers=""
port=8420
for CHUNK in ${CHUNKS:-65536 16384 262144}; do
  for side in before after; do
    port=$((port+1))
    CHUNK=$CHUNK ADDR=127.0.0.1:$port ROOT=$D/www UPLOADS=$D/up RUST_LOG=warn $D/bin/$side > /tmp/slowdl57-cpu-$side-$CHUNK.log 2>&1 &
    pid=$!; pids+=($pid)
    servers="$servers $side$((CHUNK/1024))K:$port:$pid"
  done
done
/usr/sbin/nginx -c $D/nginx/nginx.conf > /tmp/slowdl57-nginx.log 2>&1 &
npid=$!
sleep 2
[ -z "$NO_NGINX" ] && servers="$servers nginx:8402:$npid,$(pgrep -P $npid | paste -sd,)"
echo "servers:$servers"
bash $D/clients/fast.sh $ROUNDS "$servers" $P $K
for p in "${pids[@]}"; do kill -INT $p; done
kill -QUIT $npid
wait
