"""Per-route resilience: timeouts, retries and retry budgets, fault injection, mirroring.

Each is a sans-IO core (an injected clock and random source) that the HTTP engine's exchange
drives; `policy.RoutePolicy` is what a route compiles to, once, when the route table is built.
"""
