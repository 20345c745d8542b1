"""`make demo`: two nodes of a small SDK server behind nginx round-robin, sharing one
redis-server; the SDK's client opens one session through nginx, so its requests land on
both nodes, then its stream is cut mid-call and resumes with Last-Event-ID.

The demo lives in the package (``mcp_db._demo``), so an installed mcp-db runs it as
``mcp-db demo``; this file is the same thing for a checkout.
"""

import sys

from mcp_db._demo import main

if __name__ == "__main__":
    sys.exit(main())
