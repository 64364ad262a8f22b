"""Shared pieces for ztunnel unit tests: a real CA and real fetchers backed by it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from ambit.dataplane.identity import FetchResult, WorkloadCertificate, make_key_and_csr
from controller.ca import CertificateAuthority, generate_root

TD = "cluster.local"


def sid(ns: str, sa: str) -> str:
    return f"spiffe://{TD}/ns/{ns}/sa/{sa}"


class LocalCAFetcher:
    """The CertificateFetcher protocol served by an in-process CA (no network)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.calls = 0
        self.fail_next = 0          # fail this many upcoming calls (simulates a CA outage)

    async def fetch(self, identity: str, csr_pem: bytes, ttl_seconds: int) -> FetchResult:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("CA unreachable (simulated outage)")
        chain = self.ca.sign_csr(csr_pem, identity, dt.timedelta(seconds=ttl_seconds))
        return FetchResult(chain, self.ca.trust_bundle().pems())


def issue(ca: CertificateAuthority, identity: str, ttl: float = 3600) -> WorkloadCertificate:
    key_pem, csr = make_key_and_csr(identity)
    chain = ca.sign_csr(csr, identity, dt.timedelta(seconds=ttl))
    return WorkloadCertificate.from_pems(identity, key_pem, chain, ca.trust_bundle().pems())


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return CertificateAuthority(generate_root(TD), TD)


@pytest.fixture(scope="session")
def other_ca() -> CertificateAuthority:
    """A CA the mesh does not trust (same trust domain name: only the key differs)."""
    return CertificateAuthority(generate_root(TD), TD)
