"""`phonekey phone refresh` and `phonekey phone credentials`: the cloud credential cache."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .cli import EXIT_OK, _breaker, _keystore


def refresh(args: argparse.Namespace) -> int:
    import time

    from .cloud_client import CloudClient
    from .credential_cache import CredentialCache
    from .errors import CloudUnavailable, KeyStoreError, NoTrustedIssuer

    store = _keystore(args)
    trust = store.vehicle_trust(args.vin)
    _ = store.private_key
    if trust.issuer is None:
        raise NoTrustedIssuer(trust.vin)
    if trust.cloud_url is None:
        raise KeyStoreError(
            f"no cloud is configured for vehicle {trust.vin}; add one with "
            "`phonekey phone add-vehicle CARD --cloud URL`"
        )
    cache = CredentialCache(store)
    breaker = _breaker(store, trust.cloud_url)
    notes: list[str] = []

    async def refresh() -> Any:
        # Asked for explicitly: the breaker is not consulted, but it learns the result.
        async with CloudClient(trust.cloud_url, call_timeout=args.cloud_timeout) as cloud:
            try:
                credential = await cloud.request_credential(store, trust.card)
            except CloudUnavailable as exc:
                if exc.status != "refused":
                    breaker.record_failure(exc.reason)
                raise
            breaker.record_success()
            stored = cache.store(trust.vin, credential, int(time.time()))
            if not stored:
                notes.append("the cached credential lasts longer; kept it")
            try:
                listed = await cloud.revocations(trust.issuers)
                cache.store_revocation_list(listed, trust.issuers)
                since = cache.vehicle_revocation_version(trust.vin) or 0
                deltas = await cloud.revocation_deltas(since, trust.issuers)
                if deltas:
                    cache.store_deltas(deltas, trust.issuers)
                notes.append(f"revocation list version {listed.version}")
            except CloudUnavailable as exc:
                notes.append(f"revocation news not fetched: {exc}")
            return credential

    credential = asyncio.run(refresh())
    now = int(time.time())
    status = cache.status(trust.vin, now)
    print(f"{trust.vin}: fetched {_credential_text(credential, now)}")
    if status.credential is not None and status.credential != credential:
        print(f"{trust.vin}: cached {status.describe(now)}")
    for note in notes:
        print(f"{trust.vin}: {note}")
    return EXIT_OK


def _credential_text(credential: Any, now: int) -> str:
    from .trust import duration_text, utc_text

    return (
        f"{credential.role.name.lower()} credential #{credential.serial}, valid until "
        f"{utc_text(credential.not_after)} ({duration_text(credential.not_after - now)} left)"
    )


def list_credentials(args: argparse.Namespace) -> int:
    import time

    from protocol import crypto

    from .credential_cache import CredentialCache

    store = _keystore(args)
    cache = CredentialCache(store)
    now = int(time.time())
    vehicles = store.vehicles()
    if not vehicles:
        print("this phone holds no vehicle cards", file=sys.stderr)
        return EXIT_OK
    for card in vehicles:
        trust = store.vehicle_trust(card.vin)
        if trust.issuer is None:
            print(f"{card.vin}: no issuer key pinned (whitelist only)")
            continue
        status = cache.status(card.vin, now) if store.has_key() else None
        text = "no phone key yet" if status is None else status.describe(now)
        print(f"{card.vin}: {text}")
        where = f"issuer {crypto.key_id(trust.issuer)[:4].hex()}"
        if trust.cloud_url is not None:
            where += f", cloud {trust.cloud_url}"
        version = cache.revocation_version(crypto.key_id(trust.issuer), trust.issuers)
        if version:
            where += f", revocation news to version {version}"
        if store.whitelist_accepted(card.vin):
            where += ", on the vehicle's whitelist (connects without waiting for the cloud)"
        print(f"  {where}")
    return EXIT_OK
