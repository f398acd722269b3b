#!/bin/bash
# bench/files/fast.sh (session 57; see bench/FILES.md)
# fast.sh ROUNDS "name:port:pid1,pid2 ..." PATH K: interleaved rounds; each
# round, for each server, K sequential curl downloads of PATH; prints the
# server's CPU (utime+stime, all its threads) per GiB served and the
# wall-clock rate.
ROUNDS=$1; SERVERS=$2; PATH_=$3; K=$4
cpu() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
for r in $(seq 1 $ROUNDS); do
  for s in $SERVERS; do
    IFS=: read name port pids <<< "$s"
    c0=$(cpu $pids); t0=$(date +%s.%N); bytes=0
    for k in $(seq 1 $K); do
      b=$(curl -s $CURL_ARGS -o /dev/null -w '%{size_download}' http://127.0.0.1:$port$PATH_); bytes=$((bytes+b))
    done
    t1=$(date +%s.%N); c1=$(cpu $pids)
    echo "round=$r $name cpu_s_per_GiB=$(echo "scale=3; ($c1-$c0)/100/($bytes/1073741824)" | bc) MB/s=$(echo "scale=0; $bytes/($t1-$t0)/1000000" | bc) bytes=$bytes"
  done
done
