"""The dedupe key of a push without one of its own: a digest of the raw request, which stored
keys of pushes already received must keep matching (a sender's retry after an upgrade)."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.sources import IncomingPush
from gateway.web.ingest import raw_dedupe_key


def digest_as_first_written(push: IncomingPush) -> str:
    """The formula as the stored keys were made with it."""
    digest = hashlib.sha256(push.method.encode())
    digest.update(json.dumps(sorted(push.query.items())).encode("utf-8"))
    digest.update(b"\0")
    digest.update(push.body)
    return digest.hexdigest()


@given(
    method=st.sampled_from(["POST", "GET", "PUT", "PATCH"]),
    query=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    body=st.binary(max_size=64),
)
def test_the_raw_dedupe_key_is_the_digest_stored_keys_were_made_with(
    method: str, query: dict[str, str], body: bytes
) -> None:
    push = IncomingPush("channex", method, query, CIMultiDictProxy(CIMultiDict()), body)

    assert raw_dedupe_key(push) == digest_as_first_written(push)


def test_pinned_digest_of_a_push_without_query() -> None:
    push = IncomingPush("channex", "POST", {}, CIMultiDictProxy(CIMultiDict()), b'{"event":"ari"}')
    expected = hashlib.sha256(b'POST[]\0{"event":"ari"}').hexdigest()

    assert raw_dedupe_key(push) == expected
