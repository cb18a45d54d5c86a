"""Service-account sign-in on the local Drive server: the OAuth 2.0 token endpoint, as Google's
https://oauth2.googleapis.com/token answers the JWT-bearer grant (RFC 7523).

google-auth signs a JWT with the key file's private key (header: alg RS256, kid = the key's
`private_key_id`; claims: iss = `client_email`, aud, scope, iat, exp) and POSTs
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>` to the key file's
`token_uri`. `grant()` checks it against the public keys registered with the server
(`POST /_admin/service_accounts`, see credflow_assets.local.service_account) and answers
`{"access_token", "expires_in": 3600, "token_type": "Bearer"}`; the REST routes then accept that
token for an hour. A refusal is a 400 `{"error": "invalid_grant", "error_description": …}`, with
Google's wording where it is known.

google-auth always sets aud to Google's endpoint, whatever the key file's token_uri says, so that
audience is accepted, as is the server's own /token URL.

Minted tokens live in memory only, as SHA-256 digests: a restart signs every client out (google-
auth signs in again on the 401), and nothing here writes a token, an assertion or a key anywhere.
`cryptography` (there with google-auth) checks signatures; it is imported on first use, so the
rest of the server stays standard-library only and starts fast.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable

from .users import user_record

TOKEN_PATH = "/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
TOKEN_LIFETIME_S = 3600
MAX_ASSERTION_LIFETIME_S = 3600  # Google refuses assertions valid for longer than an hour
CLOCK_SKEW_S = 300
MIN_KEY_BITS = 2048
_BAD_TIMES = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


class GrantError(Exception):
    """A refused token request, answered in OAuth's error shape (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict:
        return {"error": self.error, "error_description": self.description}


class AccessTokens:
    """Access tokens minted here, each valid for TOKEN_LIFETIME_S seconds, each for one user
    (users.py): the Drive user a request with it acts as."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry_by_digest: dict[bytes, float] = {}
        self._user_by_digest: dict[bytes, dict] = {}

    def mint(self, user: dict | None = None) -> str:
        token = "local-sa." + secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            # Forget expired tokens as new ones come, so the table stays the size of an hour.
            self._expiry_by_digest = {
                digest: expiry for digest, expiry in self._expiry_by_digest.items() if expiry > now
            }
            self._user_by_digest = {digest: who for digest, who in self._user_by_digest.items()
                                    if digest in self._expiry_by_digest}
            self._expiry_by_digest[_digest(token)] = now + TOKEN_LIFETIME_S
            if user is not None:
                self._user_by_digest[_digest(token)] = user
        return token

    def valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry_by_digest.get(_digest(token))
        return expiry is not None and expiry > time.time()

    def user_of(self, token: str) -> dict | None:
        """The user a valid token was minted for (None: not one of ours, or without a user)."""
        if not self.valid(token):
            return None
        with self._lock:
            return self._user_by_digest.get(_digest(token))


def checked_public_key(pem: str) -> str:
    """`pem` if it is an RSA public key of at least MIN_KEY_BITS bits; ValueError otherwise."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        raise ValueError("public_key must be a PEM-encoded public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_KEY_BITS:
        raise ValueError(f"public_key must be an RSA key of at least {MIN_KEY_BITS} bits")
    return pem


def grant(
    form: dict[str, str],
    keys_of: Callable[[str], list[dict]],
    audiences: set[str],
    tokens: AccessTokens,
) -> dict:
    """Answer a token request (the form fields) or raise GrantError.

    `keys_of(client_email)` gives that account's registered keys ({key_id, public_key_pem});
    `audiences` are the `aud` values accepted besides Google's own token URI.
    """
    grant_type = form.get("grant_type")
    if grant_type != JWT_BEARER_GRANT:
        raise GrantError("unsupported_grant_type", f"Invalid grant_type: {grant_type or ''}")
    assertion = form.get("assertion")
    if not assertion:
        raise GrantError("invalid_request", "Missing required parameter: assertion")
    header, claims, signing_input, signature = _parse_jwt(assertion)
    if header.get("alg") != "RS256":
        raise GrantError("invalid_grant", "Invalid JWT Signature.")
    issuer = claims.get("iss")
    keys = keys_of(issuer) if isinstance(issuer, str) else []
    if not keys:
        raise GrantError("invalid_grant", "Invalid grant: account not found")
    # google-auth names the key (kid); without a kid every key of the account may have signed.
    if "kid" in header:
        keys = [key for key in keys if key["key_id"] == header["kid"]]
    if not any(_signed_by(key["public_key_pem"], signing_input, signature) for key in keys):
        raise GrantError("invalid_grant", "Invalid JWT Signature.")
    _check_times(claims)
    audience = claims.get("aud")
    if not any(
        isinstance(value, str) and value in audiences | {GOOGLE_TOKEN_URI}
        for value in (audience if isinstance(audience, list) else [audience])
    ):
        raise GrantError("invalid_grant", "Invalid JWT: Failed audience check.")
    if claims.get("sub") not in (None, issuer):
        raise GrantError("unauthorized_client", "The local Drive server does not support "
                         "domain-wide delegation (a sub claim naming another account).", 401)
    scope = claims.get("scope")
    if not isinstance(scope, str) or DRIVE_SCOPE not in scope.split():
        raise GrantError("invalid_scope", "Invalid OAuth scope or ID token audience provided. "
                         f"The local Drive server grants {DRIVE_SCOPE} only.")
    return {
        # The account acts as itself: its client e-mail is who its changes are recorded as.
        "access_token": tokens.mint(user_record(issuer, issuer)),
        "expires_in": TOKEN_LIFETIME_S, "token_type": "Bearer",
    }


def _parse_jwt(assertion: str) -> tuple[dict, dict, bytes, bytes]:
    parts = assertion.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        header, claims = (json.loads(_b64url(part)) for part in parts[:2])
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise GrantError("invalid_grant", "Invalid JWT: the assertion is not a JWT.") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise GrantError("invalid_grant", "Invalid JWT: the assertion is not a JWT.")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _signed_by(public_key_pem: str, signing_input: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_key_pem.encode("ascii"))
    try:
        key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _check_times(claims: dict) -> None:
    issued, expires = claims.get("iat"), claims.get("exp")
    if not all(isinstance(value, (int, float)) for value in (issued, expires)):
        raise GrantError("invalid_grant", _BAD_TIMES)
    now = time.time()
    if (
        expires <= issued
        or expires - issued > MAX_ASSERTION_LIFETIME_S
        or issued > now + CLOCK_SKEW_S
        or expires < now - CLOCK_SKEW_S
    ):
        raise GrantError("invalid_grant", _BAD_TIMES)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
