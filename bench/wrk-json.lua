-- wrk script used by bench/throughput.sh for its wrk cross-check: at the end of
-- the run it prints one JSON line (prefixed "WRKJSON ") with the same field
-- names as `megaconn load --json` where they exist (latency in microseconds).
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_secs":%.6f,"rps":%.2f,"bytes_read":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"p9999":%.1f,"max":%.1f}}\n',
    summary.requests, secs, summary.requests / secs, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency:percentile(99.99), latency.max))
end
