"""Who a request acts as, for Drive's `lastModifyingUser`: every revision records its author.

A request's user follows from its bearer token: the server's own token is the Drive's owner
(OWNER), a service account's minted token is that account (its client e-mail), and a token
minted by `POST /_admin/users` (`{"displayName", "emailAddress"}`) is that named person, so
tests and `credflow local seed` can upload "as" an analyst and see who Drive says it was.

A user is stored as Drive shapes it, less `me`, which depends on who asks and is set per
answer (`as_seen_by`).
"""

from __future__ import annotations

import hashlib
from email.utils import parseaddr

from .errors import bad_request

OWNER_NAME = "Local Drive owner"
OWNER_EMAIL = "owner@drive.localhost"


def user_record(display_name: str, email: str) -> dict:
    """Drive's User resource (without `me`); permissionId is stable per address, digits as
    Drive's are."""
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return {"kind": "drive#user", "displayName": display_name, "emailAddress": email,
            "permissionId": str(int(digest[:15], 16)).zfill(20)}


OWNER = user_record(OWNER_NAME, OWNER_EMAIL)


def named_user(body: dict) -> dict:
    """The user an admin token request names: `{"displayName", "emailAddress"}`, or
    `{"user": "Name <address>"}`."""
    name, email = body.get("displayName"), body.get("emailAddress")
    if isinstance(body.get("user"), str):
        name, email = parseaddr(body["user"])
    if not isinstance(email, str) or "@" not in email or any(c.isspace() for c in email):
        raise bad_request("emailAddress must be the user's e-mail address.",
                          location="emailAddress")
    if not isinstance(name, str) or not name.strip():
        name = email.partition("@")[0]
    return user_record(name.strip(), email.strip())


def as_seen_by(resource: dict, viewer: dict | None) -> dict:
    """`resource` with `lastModifyingUser.me` set for the requester `viewer`."""
    user = resource.get("lastModifyingUser")
    if user is None:
        return resource
    me = viewer is not None and user["permissionId"] == viewer["permissionId"]
    return {**resource, "lastModifyingUser": {**user, "me": me}}
