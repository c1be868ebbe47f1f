"""`sender doctor`: the SES setup checklist, checked against SES and DNS (SPEC §7).

Each row passes, warns or fails, with a one-line fix. Exit 0 when no row fails, 1 when one does,
2 when SES cannot be reached or refuses the credentials (the reason is printed, never a secret).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver
from botocore.exceptions import ClientError

from sender.config import Settings
from sender.ses import ErrorKind, classify

PASS, WARN, FAIL = "pass", "warn", "fail"
CREDENTIAL_CODES = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                              "AccessDeniedException", "AccessDenied", "ExpiredToken", "ExpiredTokenException",
                              "IncompleteSignature", "MissingAuthenticationToken", "NoCredentials"})


class SesUnreachable(Exception):
    """SES did not answer, or refused the credentials: nothing else can be checked."""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    region: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_json(self) -> str:
        return json.dumps({"region": self.region, "ok": self.ok, "checks": [asdict(c) for c in self.checks]},
                          indent=2, default=str)

    def to_table(self) -> str:
        rows = [("CHECK", "STATUS", "DETAIL", "FIX")] + [
            (c.name, c.status.upper(), c.detail, c.fix if c.status != PASS else "") for c in self.checks]
        widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((22, 6, 70, 200))]
        lines = []
        for r in rows:
            cells = [r[i][: widths[i]].ljust(widths[i]) if i < 3 else r[i] for i in range(4)]
            lines.append("  ".join(cells).rstrip())
        verdict = "ready to send" if self.ok else "NOT ready: fix the rows marked FAIL"
        return "\n".join(lines) + f"\n\nSES in {self.region}: {verdict}"


class Resolver:
    """TXT lookups through dnspython; `nameserver` (host[:port]) points it at a specific server."""

    def __init__(self, nameserver: str | None = None, timeout: float = 5.0) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        if nameserver:
            host, _, port = nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "")
            self._resolver.nameservers = [host or nameserver]
            self._resolver.port = int(port) if port else 53
        self._resolver.lifetime = timeout

    async def txt(self, name: str) -> list[str]:
        """TXT strings at name ([] when none); raises dns.exception.DNSException on lookup failure."""
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def _parents(domain: str) -> list[str]:
    labels = domain.lower().strip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


async def _identity(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(await client.get_email_identity(EmailIdentity=name))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFoundException":
            return None
        raise


def _verified(identity: dict[str, Any] | None) -> bool:
    return bool(identity) and bool(
        identity.get("VerifiedForSendingStatus") or identity.get("VerificationStatus") == "SUCCESS")  # type: ignore[union-attr]


def _unreachable(exc: Exception, what: str) -> SesUnreachable:
    failure = classify(exc, from_email="", default_from=None)
    if failure.code in CREDENTIAL_CODES:
        return SesUnreachable(f"SES refused the credentials ({failure.code}) on {what}")
    return SesUnreachable(f"SES did not answer {what} ({failure.code}: {failure.message or 'no detail'})")


async def run_checks(settings: Settings, client: Any, resolver: Resolver) -> Report:
    region = settings.region
    checks: list[Check] = []
    try:
        listed = await client.list_email_identities()
    except Exception as exc:
        raise _unreachable(exc, "ListEmailIdentities") from None
    checks.append(Check("region", PASS, f"SES answers in {region}",
                        data={"identities": len(listed.get("EmailIdentities", []))}))
    checks += await _account_checks(client)
    checks += await _identity_checks(settings, client, resolver)
    from sender.doctor_deliverability import deliverability_checks  # issue 11: events, queue, public endpoint

    checks += await deliverability_checks(settings, client)
    return Report(region=region, checks=checks)


async def _account_checks(client: Any) -> list[Check]:
    try:
        account = await client.get_account()
    except Exception as exc:
        failure = classify(exc, from_email="", default_from=None)
        if failure.code in CREDENTIAL_CODES:
            raise _unreachable(exc, "GetAccount") from None
        detail = f"GetAccount failed: {failure.code}"
        return [Check(name, FAIL, detail, "allow ses:GetAccount for this IAM user (and check the endpoint)")
                for name in ("production_access", "sending_enabled", "quotas")]
    quota = account.get("SendQuota", {})
    max_rate = quota.get("MaxSendRate", 0)
    max_24h = quota.get("Max24HourSend", 0)
    used = quota.get("SentLast24Hours", 0)
    review = (account.get("Details") or {}).get("ReviewDetails", {}).get("Status") or "none"
    checks = []
    if account.get("ProductionAccessEnabled"):
        checks.append(Check("production_access", PASS, "production access granted"))
    else:
        checks.append(Check(
            "production_access", FAIL,
            f"SES sandbox: mail only to verified addresses, {max_24h:g} per 24 h at {max_rate:g}/s; "
            f"production access review: {review}",
            "SES console > Account dashboard > Request production access (use case: marketing email)",
            data={"review_status": review}))
    enforcement = account.get("EnforcementStatus", "HEALTHY")
    if account.get("SendingEnabled", True) and enforcement == "HEALTHY":
        checks.append(Check("sending_enabled", PASS, "sending enabled, account healthy"))
    elif account.get("SendingEnabled", True):
        checks.append(Check("sending_enabled", WARN, f"sending enabled, enforcement status {enforcement}",
                            "SES console > Reputation metrics: bring bounce and complaint rates down"))
    else:
        checks.append(Check("sending_enabled", FAIL, f"sending is disabled (enforcement status {enforcement})",
                            "SES console > Account dashboard: resolve the case, then re-enable sending"))
    unlimited = max_24h == -1
    remaining = None if unlimited else max(0.0, max_24h - used)
    detail = (f"max {max_rate:g}/s; 24 h quota {'unlimited' if unlimited else f'{max_24h:g}'}, "
              f"{used:g} used" + ("" if remaining is None else f", {remaining:g} left"))
    data = {"max_send_rate": max_rate, "max_24h": max_24h, "sent_24h": used}
    if remaining == 0:
        checks.append(Check("quotas", FAIL, detail, "wait for the 24 h window, or request a quota increase "
                                                  "(Service Quotas > Amazon SES)", data=data))
    else:
        checks.append(Check("quotas", PASS, detail, data=data))
    return checks


async def _identity_checks(settings: Settings, client: Any, resolver: Resolver) -> list[Check]:
    from_email = settings.from_email
    if not from_email or "@" not in from_email:
        fix = "set SES_FROM_EMAIL to an address on your verified sending domain"
        rest = ("sender_identity", "domain_verified", "dkim", "spf")
        return [Check("from_address", FAIL, "SES_FROM_EMAIL is not set", fix)] + [
            Check(name, FAIL, "needs SES_FROM_EMAIL", fix) for name in rest]
    address = from_email.lower()
    domain = address.rsplit("@", 1)[1]
    checks = [Check("from_address", PASS, f"SES_FROM_EMAIL is {from_email}")]
    try:
        address_identity = await _identity(client, address)
        domain_identity, domain_name = None, domain
        for name in _parents(domain):
            found = await _identity(client, name)
            if found is not None:
                domain_identity, domain_name = found, name
                break
    except Exception as exc:
        raise _unreachable(exc, "GetEmailIdentity") from None

    if _verified(domain_identity):
        checks.append(Check("sender_identity", PASS, f"{from_email} is covered by verified domain {domain_name}"))
    elif _verified(address_identity):
        checks.append(Check("sender_identity", PASS, f"{from_email} is a verified address identity"))
    else:
        checks.append(Check("sender_identity", FAIL, f"{from_email} belongs to no verified identity",
                            f"SES console > Identities > Create identity: domain {domain} (or verify the address)"))

    if _verified(domain_identity):
        checks.append(Check("domain_verified", PASS, f"domain {domain_name} is verified for sending"))
    elif domain_identity is not None:
        checks.append(Check("domain_verified", FAIL, f"domain {domain_name} is not verified yet "
                            f"({domain_identity.get('VerificationStatus', 'PENDING')})",
                            "publish the DKIM CNAME records shown below; SES verifies the domain through them"))
    elif _verified(address_identity):
        checks.append(Check("domain_verified", WARN,
                            f"only the address {from_email} is verified: fine for testing, use a domain for campaigns",
                            f"SES console > Identities > Create identity: domain {domain}"))
    else:
        checks.append(Check("domain_verified", FAIL, f"no identity for {domain}",
                            f"SES console > Identities > Create identity: domain {domain}"))

    checks.append(_dkim_check(domain_name, domain_identity))
    checks.append(await _spf_check(domain, domain_identity, resolver))
    return checks


def _dkim_check(domain: str, identity: dict[str, Any] | None) -> Check:
    if identity is None:
        return Check("dkim", FAIL, f"no domain identity for {domain}, so no DKIM",
                     f"create the domain identity {domain} with Easy DKIM")
    dkim = identity.get("DkimAttributes") or {}
    status, tokens = dkim.get("Status", "NOT_STARTED"), dkim.get("Tokens") or []
    records = [f"{t}._domainkey.{domain} CNAME {t}.dkim.amazonses.com" for t in tokens]
    if not dkim.get("SigningEnabled"):
        return Check("dkim", FAIL, f"DKIM signing is disabled for {domain}",
                     "SES console > Identities > domain > Authentication: enable DKIM signing")
    if status == "SUCCESS":
        return Check("dkim", PASS, f"DKIM signing enabled and verified for {domain}")
    if status in ("PENDING", "NOT_STARTED"):
        return Check("dkim", FAIL, f"DKIM {status}: waiting for DNS (up to 72 h)",
                     "add these CNAME records: " + "; ".join(records), data={"records": records})
    return Check("dkim", FAIL, f"DKIM {status}: SES could not find the CNAME records",
                 "check these CNAME records exist exactly: " + "; ".join(records), data={"records": records})


async def _spf_check(domain: str, identity: dict[str, Any] | None, resolver: Resolver) -> Check:
    mail_from = ((identity or {}).get("MailFromAttributes") or {}).get("MailFromDomain") or ""
    target = mail_from or domain
    try:
        records = [t for t in await resolver.txt(target) if t.lower().startswith("v=spf1")]
    except dns.exception.DNSException as exc:
        return Check("spf", FAIL, f"DNS lookup of {target} TXT failed ({type(exc).__name__})",
                     "check that the domain's DNS answers, then run doctor again")
    fix = f'publish one TXT record at {target}: "v=spf1 include:amazonses.com ~all"'
    if not records:
        return Check("spf", FAIL, f"no SPF record on {target}", fix)
    if len(records) > 1:
        return Check("spf", FAIL, f"{len(records)} SPF records on {target}: receivers treat that as an error "
                     "(RFC 7208 allows one)", "merge them into a single v=spf1 record with include:amazonses.com",
                     data={"records": records})
    terms = records[0].lower().split()
    if "include:amazonses.com" not in terms:
        return Check("spf", FAIL, f"SPF on {target} does not include amazonses.com",
                     f"add include:amazonses.com to: {records[0]}", data={"records": records})
    return Check("spf", PASS, f"one SPF record on {target}, includes amazonses.com", data={"records": records})


async def doctor(settings: Settings, *, nameserver: str | None = None) -> tuple[int, Report | None, str]:
    """Run the checklist; (exit code, report, error line)."""
    from sender.ses import open_ses

    resolver = Resolver(nameserver)
    try:
        async with open_ses(settings.with_overrides(send_timeout=min(settings.send_timeout, 10.0)), pool_size=4) as ses:
            report = await run_checks(settings, ses.raw, resolver)
    except SesUnreachable as exc:
        return 2, None, f"sender doctor: {exc} (region {settings.region})"
    except Exception as exc:  # e.g. no credentials at all
        failure = classify(exc, from_email="", default_from=None)
        if failure.kind is ErrorKind.ACCOUNT or failure.kind is ErrorKind.TRANSIENT:
            return 2, None, f"sender doctor: cannot reach SES in {settings.region}: {failure.code}"
        raise
    return (0 if report.ok else 1), report, ""
