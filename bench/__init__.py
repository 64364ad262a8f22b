"""The Ambit benchmark suite: `python -m bench` (or `make bench`, `ambit bench`).

It brings up a lab of its own, runs the same load tools against the same pods with and without
the mesh (and against stunnel/haproxy mTLS tunnels as baselines), and writes JSON, Markdown and
PNG results to bench/results/. Everything that turns tool output into numbers is sans-IO and
unit-tested (tests/unit/bench); the modules that touch the lab are labenv, tools and runner.
"""
