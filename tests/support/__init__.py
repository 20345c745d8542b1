"""Throwaway servers for the test suite, the benchmarks and ``make demo``: a ``redis-server``
and an nginx round-robin load balancer, each on free loopback ports and stopped at the end.

They start real processes, which is what the tests need; they are not deployment tools, and
they are not part of the package (nothing here ships in the wheel)."""
