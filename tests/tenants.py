"""The test tenants (api keys) and the repository root, shared by fixtures and helpers."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TENANT_A = {"name": "reseller-a", "key": "key-a-0123456789", "products": ["*"]}
TENANT_B = {"name": "reseller-b", "key": "key-b-0123456789", "products": ["room-1", "room-2"]}
ADMIN = {"name": "ops", "key": "key-admin-0123456", "products": ["*"], "admin": True}

AUTH_A = {"Authorization": f"Bearer {TENANT_A['key']}"}
AUTH_B = {"Authorization": f"Bearer {TENANT_B['key']}"}
AUTH_ADMIN = {"Authorization": f"Bearer {ADMIN['key']}"}
