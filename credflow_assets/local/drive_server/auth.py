"""Who may call: the bearer token on API and admin requests, Google's token endpoint for
service-account sign-in (oauth.py), and registering a service account's public key."""

from __future__ import annotations

import hmac
import re
from urllib.parse import parse_qsl

from . import oauth, users
from .errors import ApiError, bad_request

MAX_TOKEN_REQUEST = 64 * 1024  # a JWT-bearer grant is a few KB
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # token answers, as RFC 6749 5.1


class Auth:
    """Mixed into server.Handler: authenticates requests and answers POST /token."""

    def _authenticate(self, *, admin: bool) -> None:
        """The server's own token opens everything; a service account's minted token opens the
        Drive API only (an admin call can wipe the Drive, which no Drive user can)."""
        header = self.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, "authError", "Login Required.", location="Authorization",
                           location_type="header")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        own = hmac.compare_digest(credential.encode(), self.server.token.encode())
        minted = not admin and self.server.access_tokens.valid(credential)
        if scheme.lower() != "bearer" or not (own or minted):
            raise ApiError(401, "authError", "Invalid Credentials", location="Authorization",
                           location_type="header")
        # Who this request acts as: what its revisions record as `lastModifyingUser`.
        self._user = users.OWNER if own else (
            self.server.access_tokens.user_of(credential) or users.OWNER)

    def _mint_user_token(self, body: dict) -> dict:
        """A token acting as a named user (`POST /_admin/users`), for an hour."""
        user = users.named_user(body)
        token = self.server.access_tokens.mint(user)
        return {"access_token": token, "expires_in": oauth.TOKEN_LIFETIME_S,
                "token_type": "Bearer", "user": user}

    def _token_grant(self) -> None:
        """Google's token endpoint, for google-auth's service-account credentials (oauth.py)."""
        if self._remaining > MAX_TOKEN_REQUEST:
            self._drain()
            error = oauth.GrantError("invalid_request", "The token request is too large.")
        else:
            form = dict(parse_qsl(self._read(self._remaining).decode("utf-8", "replace")))
            own_url = f"http://127.0.0.1:{self.server.server_address[1]}{oauth.TOKEN_PATH}"
            audiences = {own_url, self._base_url() + oauth.TOKEN_PATH.lstrip("/")}
            try:
                body = oauth.grant(form, self._account_keys, audiences, self.server.access_tokens)
            except oauth.GrantError as refused:
                error = refused
            else:
                self._send_json(200, body, _NO_STORE)
                return
        self._send_json(error.status, error.body(), _NO_STORE)

    def _account_keys(self, client_email: str) -> list[dict]:
        return self.store.service_account_keys(client_email)

    def _register_key(self, body: dict) -> dict:
        email, key_id, pem = (body.get(k) for k in ("client_email", "private_key_id", "public_key"))
        if not isinstance(email, str) or "@" not in email:
            raise bad_request("client_email must be a service account's email address.")
        if not isinstance(key_id, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", key_id):
            raise bad_request("private_key_id must be the key's id (letters, digits, ._-).")
        try:
            pem = oauth.checked_public_key(pem if isinstance(pem, str) else "")
        except ValueError as error:
            raise bad_request(str(error)) from None
        self.store.add_service_account_key(key_id, email, pem)
        return {"client_email": email, "private_key_id": key_id, "registered": True}
