-- New connections per second: one HTTP/1.0 request per connection. nginx closes the connection
-- after the response and wrk opens a new one, so requests/s here is connections/s.
-- done() prints one machine-readable line that bench.parsers.parse_wrk reads.
request = function()
  return "GET /1k HTTP/1.0\r\nHost: bench\r\n\r\n"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
