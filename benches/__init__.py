"""Benchmarks: mcp-db's RedisEventStore against a plain redis-py store of the same layout.

Run ``python -m benches`` (``make bench``) from the repository root; ``--quick`` for a
short run. Both stores are measured in one process against one throwaway ``redis-server``,
runs alternating between them, and each line prints both figures and their ratio.
"""
