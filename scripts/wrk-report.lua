-- wrk reporter for scripts/bench-http.sh: one machine-readable line per run.
-- WRK_RESULT <req/s> <p50 ms> <p99 ms> <mean ms> <requests> <errors>
-- (wrk counts statuses >= 400 as errors; 304 is not one.)
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("WRK_RESULT %.0f %.3f %.3f %.3f %d %d\n",
    summary.requests / seconds,
    latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    latency.mean / 1000,
    summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout))
end
