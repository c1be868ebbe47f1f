"""`sender doctor` against the fake SES, moto's server and a real DNS responder on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator

import boto3
import pytest

from sender.config import Settings
from sender.demo.fakeses import Account, FakeSES, Fault
from sender.doctor import FAIL, PASS, WARN, Report, doctor
from tests.dnsserver import TinyDNS, start_dns

GOOD_SPF = "v=spf1 include:amazonses.com ~all"


@pytest.fixture
async def dns_server() -> AsyncIterator[TinyDNS]:
    server = await start_dns({"example.com": [GOOD_SPF, "google-site-verification=abc"]})
    yield server
    assert server.transport is not None
    server.transport.close()


@pytest.fixture
async def ses() -> AsyncIterator[FakeSES]:
    fake = FakeSES(account=Account(max_send_rate=14, max_24h=50_000, sent_24h=1200))
    fake.add_identity("example.com")
    await fake.start()
    yield fake
    await fake.stop()


def settings_for(ses: FakeSES, from_email: str | None = "news@example.com") -> Settings:
    return Settings(endpoint_url=ses.url, from_email=from_email, region="eu-west-1", send_timeout=3)


async def check(ses: FakeSES, dns_server: TinyDNS, **kwargs: object) -> tuple[int, Report | None, str]:
    return await doctor(settings_for(ses, **kwargs), nameserver=dns_server.address)  # type: ignore[arg-type]


def rows(report: Report | None) -> dict[str, tuple[str, str, str]]:
    assert report is not None
    return {c.name: (c.status, c.detail, c.fix) for c in report.checks}


async def test_everything_passes_on_a_ready_account(ses: FakeSES, dns_server: TinyDNS) -> None:
    code, report, _ = await check(ses, dns_server)
    r = rows(report)
    assert code == 0
    assert list(r) == ["region", "production_access", "sending_enabled", "quotas", "from_address",
                       "sender_identity", "domain_verified", "dkim", "spf"]
    assert all(status == PASS for status, _, _ in r.values())
    assert r["region"][1] == "SES answers in eu-west-1"
    assert r["quotas"][1] == "max 14/s; 24 h quota 50000, 1200 used, 48800 left"
    assert r["spf"][1] == "one SPF record on example.com, includes amazonses.com"
    assert "example.com" in dns_server.queries
    table = report.to_table()  # type: ignore[union-attr]
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL", "FIX"]
    assert table.endswith("SES in eu-west-1: ready to send")


async def test_sandbox_states_its_limits_and_review(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.account.production, ses.account.review_status = False, "PENDING"
    ses.account.max_24h, ses.account.max_send_rate = 200, 1
    code, report, _ = await check(ses, dns_server)
    status, detail, fix = rows(report)["production_access"]
    assert (code, status) == (1, FAIL)
    assert detail == ("SES sandbox: mail only to verified addresses, 200 per 24 h at 1/s; "
                      "production access review: PENDING")
    assert "Request production access" in fix


async def test_sending_disabled_and_quota_used_up_fail(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.account.sending_enabled, ses.account.enforcement = False, "SHUTDOWN"
    ses.account.sent_24h = ses.account.max_24h
    code, report, _ = await check(ses, dns_server)
    r = rows(report)
    assert code == 1
    assert r["sending_enabled"][:2] == (FAIL, "sending is disabled (enforcement status SHUTDOWN)")
    assert r["quotas"][0] == FAIL and "0 left" in r["quotas"][1]


async def test_probation_warns_without_failing(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.account.enforcement = "PROBATION"
    code, report, _ = await check(ses, dns_server)
    assert code == 0 and rows(report)["sending_enabled"][0] == WARN


async def test_address_identity_only_is_flagged_for_testing(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.identities.clear()
    ses.add_identity("news@example.com")
    code, report, _ = await check(ses, dns_server)
    r = rows(report)
    assert r["sender_identity"] == (PASS, "news@example.com is a verified address identity", r["sender_identity"][2])
    assert r["domain_verified"][0] == WARN and "fine for testing, use a domain for campaigns" in r["domain_verified"][1]
    assert r["dkim"][0] == FAIL and code == 1


async def test_parent_domain_identity_covers_subdomain_sender(ses: FakeSES, dns_server: TinyDNS) -> None:
    dns_server.records["mail.example.com"] = [GOOD_SPF]
    code, report, _ = await check(ses, dns_server, from_email="news@mail.example.com")
    r = rows(report)
    assert code == 0
    assert r["sender_identity"][1] == "news@mail.example.com is covered by verified domain example.com"


async def test_unverified_sender_and_missing_identity(ses: FakeSES, dns_server: TinyDNS) -> None:
    code, report, _ = await check(ses, dns_server, from_email="news@other.org")
    r = rows(report)
    assert code == 1
    assert r["sender_identity"][:2] == (FAIL, "news@other.org belongs to no verified identity")
    assert r["domain_verified"][:2] == (FAIL, "no identity for other.org")
    code, report, _ = await check(ses, dns_server, from_email=None)
    assert code == 1 and rows(report)["from_address"][:2] == (FAIL, "SES_FROM_EMAIL is not set")


async def test_dkim_pending_lists_cname_records(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.add_identity("example.com", dkim_status="PENDING", dkim_tokens=["aaa", "bbb"])
    code, report, _ = await check(ses, dns_server)
    status, detail, fix = rows(report)["dkim"]
    assert (code, status, detail) == (1, FAIL, "DKIM PENDING: waiting for DNS (up to 72 h)")
    assert fix == ("add these CNAME records: aaa._domainkey.example.com CNAME aaa.dkim.amazonses.com; "
                   "bbb._domainkey.example.com CNAME bbb.dkim.amazonses.com")
    ses.add_identity("example.com", dkim_enabled=False)
    _, report, _ = await check(ses, dns_server)
    assert rows(report)["dkim"][:2] == (FAIL, "DKIM signing is disabled for example.com")


@pytest.mark.parametrize(("records", "detail"), [
    (["google-site-verification=abc"], "no SPF record on example.com"),
    (["v=spf1 include:_spf.google.com ~all"], "SPF on example.com does not include amazonses.com"),
    ([GOOD_SPF, "v=spf1 include:mailgun.org ~all"], "2 SPF records on example.com"),
])
async def test_spf_failures(ses: FakeSES, dns_server: TinyDNS, records: list[str], detail: str) -> None:
    dns_server.records["example.com"] = records
    code, report, _ = await check(ses, dns_server)
    status, got, fix = rows(report)["spf"]
    assert (code, status) == (1, FAIL)
    assert got.startswith(detail)
    assert "amazonses.com" in fix


async def test_spf_checked_on_mail_from_domain_when_set(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.add_identity("example.com", mail_from_domain="bounce.example.com")
    dns_server.records["bounce.example.com"] = [GOOD_SPF]
    dns_server.records["example.com"] = []
    code, report, _ = await check(ses, dns_server)
    assert code == 0 and rows(report)["spf"][1] == "one SPF record on bounce.example.com, includes amazonses.com"


async def test_spf_nxdomain_is_no_record(ses: FakeSES, dns_server: TinyDNS) -> None:
    del dns_server.records["example.com"]
    _, report, _ = await check(ses, dns_server)
    assert rows(report)["spf"][:2] == (FAIL, "no SPF record on example.com")


async def test_rejected_credentials_exit_2_without_the_secret(ses: FakeSES, dns_server: TinyDNS) -> None:
    ses.inject(Fault("InvalidClientTokenId", 403, "The security token included in the request is invalid.",
                     operations=("ListEmailIdentities", "GetAccount", "SendEmail")))
    code, report, error = await check(ses, dns_server)
    assert (code, report) == (2, None)
    assert error == "sender doctor: SES refused the credentials (InvalidClientTokenId) on ListEmailIdentities " \
                    "(region eu-west-1)"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in error


async def test_unreachable_endpoint_exit_2(dns_server: TinyDNS) -> None:
    settings = Settings(endpoint_url="http://127.0.0.1:9", from_email="news@example.com", send_timeout=2)
    code, report, error = await doctor(settings, nameserver=dns_server.address)
    assert (code, report) == (2, None)
    assert "SES did not answer ListEmailIdentities" in error


async def test_identity_rows_against_moto(moto_url: str, dns_server: TinyDNS) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10)
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_email_identity(EmailIdentity="example.com")
    settings = Settings(endpoint_url=moto_url, from_email="news@example.com", send_timeout=3)
    code, report, _ = await doctor(settings, nameserver=dns_server.address)
    r = rows(report)
    assert r["region"][0] == PASS
    assert r["sender_identity"][:2] == (PASS, "news@example.com is covered by verified domain example.com")
    assert r["domain_verified"][0] == PASS
    assert r["dkim"][:2] == (FAIL, "DKIM signing is disabled for example.com")  # moto starts DKIM off
    assert r["production_access"][1].startswith("GetAccount failed")  # moto has no GetAccount
    assert code == 1
    code, report, _ = await doctor(settings.with_overrides(from_email="x@nowhere.org"), nameserver=dns_server.address)
    assert rows(report)["sender_identity"][0] == FAIL


async def test_cli_json_shape_and_exit_codes(ses: FakeSES, dns_server: TinyDNS) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDER_", "SES_", "AWS_ENDPOINT"))} | {
        "AWS_ENDPOINT_URL_SESV2": ses.url, "SES_FROM_EMAIL": "news@example.com", "SENDER_ENV_FILE": "/nonexistent"}

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "doctor", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await cli("--json", "--dns-server", dns_server.address)
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["region"] == "us-east-1"
    assert set(data["checks"][0]) == {"name", "status", "detail", "fix", "data"}
    assert [c["name"] for c in data["checks"]][-1] == "spf"
    dns_server.records["example.com"] = []
    code, out = await cli("--dns-server", dns_server.address)
    assert code == 1 and "spf" in out and "FAIL" in out and "NOT ready" in out
    env["AWS_ENDPOINT_URL_SESV2"] = "http://127.0.0.1:9"
    code, out = await cli("--json", "--dns-server", dns_server.address)
    assert code == 2 and json.loads(out)["ok"] is False
