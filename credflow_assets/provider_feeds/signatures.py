"""A raw copy's detached signature (`X.sig`), checked against its provider's key and no other.

A file that comes with a signature lands only if the signature verifies against the provider's
`signing_key_file`; one without lands only if the provider does not `require_signature`.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any, Optional

from credflow_assets.provider_feeds.failures import FileRef, file_failure
from credflow_assets.provider_feeds.names import SIGNATURE_SUFFIX
from credflow_assets.provider_feeds.raw_file import fetch_copy
from credflow_assets.provider_feeds.settings import ProviderFeed, ProviderFeedsSettings


def verify_signature(client, settings: ProviderFeedsSettings, feed: ProviderFeed, ref: FileRef,
                     copy: dict[str, Any], raw_local: Path, sig_dir: Path) -> Optional[str]:
    """The signer's fingerprint; None when there is no signature and none is required."""
    signature = copy.get("signature")
    name = posixpath.basename(ref.remote_path)
    if signature is None:
        if feed.require_signature:
            raise file_failure(
                ref, "verify the signature",
                f"signature required (require_signature) but no {name}{SIGNATURE_SUFFIX} came "
                "with the file; refusing to land unverified data", transient=False,
            )
        return None
    signing_key_file = feed.setting("signing_key_file")
    if not signing_key_file:
        raise file_failure(
            ref, "verify the signature",
            f"{name}{SIGNATURE_SUFFIX} came with the file but provider {feed.name} has no "
            "signing_key_file to verify it with; refusing to land unverified data",
            transient=False,
        )
    try:
        armored = Path(signing_key_file).read_text()
    except OSError as error:
        raise file_failure(
            ref, "verify the signature",
            f"cannot read the provider's signing key {signing_key_file}: "
            f"{error.strerror or error}", transient=False,
        ) from None
    sig_local = fetch_copy(client, settings, {**signature, "bucket": copy["bucket"]},
                           sig_dir / f"{name}{SIGNATURE_SUFFIX}")
    gpg = feed.gpg()
    allowed = gpg.import_keys(armored)
    return gpg.verify_detached(sig_local, raw_local, allowed_fingerprints=allowed)
