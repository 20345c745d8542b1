"""What a node says about its request-state keys (protocol 2026-07-28), and the rule that
makes two nodes' statements comparable.

A multi-round-trip request (``InputRequiredResult``) hands the client a ``requestState``
sealed under the server's key ring; the next round may land on any node, and must unseal
there. Each node's heartbeat therefore carries a fingerprint of its ring, and ``mcp-db
doctor`` compares them. This module is pure: the SDK's parts are read in
``_sdk/request_state.py``.

What the heartbeat carries, and why none of it helps to recover a key:

- ``keys``: the SDK's own key ids, 4 bytes each. The SDK derives each from the key with
  SHA-256 and puts it in clear at the front of every token it seals, so every client
  already sees the one that seals. They are what tells a ring being rotated (the sealing
  key known everywhere) from rings that do not match.
- ``mint``: which of those ids seals.
- ``audience``: the audience claim (``MCPServer`` uses the server's name).
- ``fingerprint``: a hash of the sorted ids and the audience, so that equal rings are seen
  equal at a glance, whatever order each node lists its keys in.
- ``ephemeral``: whether the ring is ``RequestStateSecurity.ephemeral()``'s (a key per
  process), ``None`` when that cannot be known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

#: Prefixes the fingerprint's input. The ids inside are themselves hashes of keys under the
#: SDK's own prefix; ours keeps the fingerprint from ever equalling a hash anything else
#: computes over the same bytes (a key id, a token's parts), so it can be matched with
#: nothing but another fingerprint.
FINGERPRINT_DOMAIN = b"mcp-db/request-state/ring/v1\x00"
#: Hex digits of the fingerprint kept: 64 bits, plenty to tell a handful of rings apart.
FINGERPRINT_HEX = 16


def fingerprint(key_ids: Iterable[bytes], audience: str | None) -> str:
    """A short hex digest of a key ring (by its key ids) and its audience.

    Order-free: ``keys=[old, new]`` and ``keys=[new, old]`` unseal the same tokens, so
    they are the same ring here. The input is canonical JSON, so no two different
    (ids, audience) pairs can run together into the same bytes.
    """
    canonical = json.dumps(
        {"audience": audience, "keys": sorted(kid.hex() for kid in key_ids)},
        separators=(",", ":"),
        sort_keys=True,
    )
    digest = hashlib.sha256(FINGERPRINT_DOMAIN + canonical.encode())
    return digest.hexdigest()[:FINGERPRINT_HEX]


def describe(
    key_ids: Iterable[bytes], mint: bytes, audience: str | None, ephemeral: bool | None
) -> dict[str, Any]:
    """The heartbeat's ``request_state`` entry for a ring of the SDK's built-in codec."""
    ids = sorted(set(key_ids))
    return {
        "fingerprint": fingerprint(ids, audience),
        "keys": [kid.hex() for kid in ids],
        "mint": mint.hex(),
        "audience": audience,
        "ephemeral": ephemeral,
    }


def describe_custom(codec: str, ephemeral: bool | None) -> dict[str, Any]:
    """The entry for a ring mcp-db cannot look into: a codec of the application's own (a
    KMS, say). It has no fingerprint, and the doctor says it did not compare it."""
    return {"codec": codec, "ephemeral": ephemeral}


def unseals(sealer: dict[str, Any], opener: dict[str, Any]) -> bool:
    """Whether what the node described by ``sealer`` seals, the one described by
    ``opener`` unseals: the sealing key is in the opener's ring, and the audiences match.
    Rings may differ and still pass, halfway through a rotation."""
    return sealer.get("mint") in (opener.get("keys") or ()) and sealer.get(
        "audience"
    ) == opener.get("audience")
