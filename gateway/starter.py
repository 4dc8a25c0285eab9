"""The commented starter gateway.toml that ``gateway init`` writes, with fresh secrets.

Every secret is drawn from ``secrets`` each time: a starter never carries the demo keys of the
shipped gateway.toml.
"""

from __future__ import annotations

import secrets

STARTER = """\
# octo-gateway configuration, written by `gateway init`. The keys and tokens below were drawn at
# random for this file: keep it private (it is readable by its owner only).
#
# Any string may be written as "${NAME}" to read the environment variable NAME (for example
# key = "${RESELLER_KEY}"); relative paths are resolved against the folder that holds this file.
# `gateway check` validates this file; `gateway serve` runs it.
#
# Before production: put each PMS's API credentials in its [sources.*] table, point the PMS's
# webhooks at https://<this gateway>/ingest/<source> with the source's token, and give each
# reseller its own [[api_keys]] table.
#
# To try it first without a PMS: set [sandbox] enabled = true and api_url = "sandbox" in the
# sources, then `gateway push-sample channex booking` feeds it a vendor sample.

[server]
host = "127.0.0.1"              # address to listen on ("0.0.0.0": every interface)
port = 8080                     # port to listen on (0 picks a free one)
max_body_bytes = 1048576        # larger request bodies answer 413
# public_url = "https://gateway.example.com"   # how the world reaches us (behind a proxy)

[storage]
path = "gateway.db"             # the embedded SQLite database file (WAL mode; created on first start)

# [plugins]
# dir = "plugins"               # a folder of drop-in plugins (*.py files and packages), added to
#                               # the built-in Channex and Beds24 sources

# [templates]
# dir = "templates"             # a folder of Jinja2 body templates overriding the built-in ones by name

[delivery]
allow_private_targets = false   # true: subscribers may point at loopback/private addresses
retry_schedule = [5, 300, 1800, 7200, 18000, 36000, 36000]  # seconds between attempts
timeout = 15.0                  # seconds for one delivery attempt
retention_days = 7              # finished messages (delivered, dead, ...) are kept this long, then pruned

[retention]                     # how long what the gateway keeps is kept (docs/data.md); messages, their
                                # attempts and events follow delivery.retention_days
pushes_days = 7                 # processed pushes, raw bodies (guest data) and all, are deleted this long after
failed_pushes_days = 30         # a failed push is kept this long for a replay (gateway replay-pushes)
state_days_after_stay = 30      # a booking's last state and room map, a day's availability: kept this long
                                # after the stay (the day) ended
interval = 3600.0               # seconds between maintenance rounds (deletes, then gives the space back)

[logging]
level = "INFO"                  # DEBUG, INFO, WARNING or ERROR; logs go to stderr

[supplier]                      # the OCTO Supplier sent with every event
id = "my-hotel"
name = "My Hotel"
# email = "reservations@my-hotel.example"
# telephone = "+44 20 0000 0000"
# website = "https://my-hotel.example"

[[api_keys]]                    # one table per reseller (tenant)
name = "reseller"               # the tenant's name; its subscriptions belong to it
key = "@RESELLER_KEY@"          # Authorization: Bearer <key>
products = ["*"]                # OCTO productIds whose events this key may receive; "*" = all
admin = false

[[api_keys]]                    # an operator key: may also use the /admin endpoints
name = "admin"
key = "@ADMIN_KEY@"
products = ["*"]
admin = true

[sandbox]
enabled = false                 # true: serve a demo PMS API and receiver under /sandbox

[sources.channex]               # POST /ingest/channex (Channex webhook, header X-Gateway-Token)
token = "@CHANNEX_TOKEN@"       # the secret the Channex webhook must present
api_url = "https://app.channex.io/api/v1"   # "sandbox" = the built-in sandbox PMS API
api_key = ""                    # your Channex user API key: pulls and acknowledges booking revisions
timezone = "UTC"                # the property's IANA time zone
# [sources.channex.product_map] # Channex room_type_id -> OCTO productId (default: the id itself)

[sources.beds24]                # GET/POST /ingest/beds24 (notify URL v1 and v2, inventory webhook)
token = "@BEDS24_TOKEN@"        # the secret the Beds24 webhook must present (?token= for version 1)
api_url = "https://beds24.com/api/v2"       # "sandbox" = the built-in sandbox PMS API
api_token = ""                  # your Beds24 API v2 token: reads bookings and calendars
timezone = "UTC"
sync_days = 90                  # SYNC_ROOM reads the room's calendar this many days from today
"""

SECRETS = ("@RESELLER_KEY@", "@ADMIN_KEY@", "@CHANNEX_TOKEN@", "@BEDS24_TOKEN@")


def starter_config() -> str:
    """The starter file's text, each secret 32 fresh URL-safe characters."""
    text = STARTER
    for marker in SECRETS:
        text = text.replace(marker, secrets.token_urlsafe(24))
    return text
