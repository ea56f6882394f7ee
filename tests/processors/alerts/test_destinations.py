"""The destination policy: which webhook URLs and addresses the dispatcher refuses, and the pinning.

No test here resolves a name through the system or opens a socket: names go through a fake
resolver, and the transport under the pinned one is an httpx.MockTransport that records what
reached it.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest
from pydantic import ValidationError

from agentledger.settings import Settings
from processors.alerts.destinations import (
    DestinationRefused,
    PinnedTransport,
    check_address,
    check_url,
    destination_id,
)

pytestmark = pytest.mark.unit


def refused_code(url: str, *, allow_private: bool = False) -> str:
    with pytest.raises(DestinationRefused) as info:
        check_url(url, allow_private=allow_private)
    return info.value.code


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.255.255.254:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://LOCALHOST./", "loopback"),
        ("http://api.localhost/", "loopback"),
        ("http://169.254.1.1/", "link_local"),
        ("http://[fe80::1]/", "link_local"),
        ("http://10.0.0.1/", "private"),
        ("http://10.255.255.255/", "private"),
        ("http://172.16.0.1/", "private"),
        ("http://172.31.255.254/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fc00::1]/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://100.64.0.1/", "not_global"),
        ("http://192.0.2.10/", "private"),  # documentation (TEST-NET-1)
        ("http://240.0.0.1/", "private"),  # reserved
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://168.63.129.16/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://METADATA.Google.Internal./", "metadata"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:10.1.2.3]/", "private"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),  # NAT64 of 169.254.169.254
        ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
        ("http://2130706433/", "ambiguous_ip"),  # decimal 127.0.0.1
        ("http://017700000001/", "ambiguous_ip"),  # octal
        ("http://0x7f000001/", "ambiguous_ip"),  # hex
        ("http://0x7f.1/", "ambiguous_ip"),
        ("http://127.1/", "ambiguous_ip"),
        ("http://0177.0.0.1/", "invalid_url"),  # the URL parser itself rejects leading zeros
        ("http://10.0.0.01/", "invalid_url"),
        ("http://[fe80::1%25eth0]/", "host"),  # zone id
        ("http://%31%32%37.0.0.1/", "host"),  # percent-encoded
        ("http://exa_mple.com/", "host"),
        ("http://127.0.0.1@evil.example/", "userinfo"),
        ("http://user:secret@hooks.example.com/", "userinfo"),
        ("ftp://hooks.example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://hooks.example.com/", "scheme"),
        ("hooks.example.com/path", "scheme"),
        ("http:///path-only", "no_host"),
    ],
)
def test_refused(url: str, code: str) -> None:
    assert refused_code(url) == code


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://hooks.slack.com/services/T0/B0/x", "hooks.slack.com", 443),
        ("HTTPS://Hooks.Example.COM:8443/a", "hooks.example.com", 8443),
        ("Http://93.184.216.34/", "93.184.216.34", 80),
        ("http://[2606:4700::1111]:8080/", "2606:4700::1111", 8080),
        ("http://hooks.example.com./", "hooks.example.com", 80),
        ("http://1password.example/", "1password.example", 80),
    ],
)
def test_allowed(url: str, host: str, port: int) -> None:
    destination = check_url(url, allow_private=False)
    assert (destination.host, destination.port) == (host, port)
    assert destination.scheme in {"http", "https"}


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/", "http://[::1]/", "http://10.0.0.1/", "http://192.168.0.5/", "http://169.254.1.1/",
     "http://localhost:8080/", "http://100.64.0.1/"],
)  # fmt: skip
def test_allow_private_lifts_the_private_classes(url: str) -> None:
    assert refused_code(url) in {"loopback", "private", "link_local", "not_global"}
    check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://metadata.google.internal/", "http://0.0.0.0/",
     "http://224.0.0.1/", "http://2130706433/", "http://127.0.0.1@evil.example/", "ftp://10.0.0.1/"],
)  # fmt: skip
def test_allow_private_does_not_lift_the_rest(url: str) -> None:
    with pytest.raises(DestinationRefused) as info:
        check_url(url, allow_private=True)
    assert info.value.overridable is False


def test_userinfo_trick_names_the_real_host() -> None:
    # The parser reads `evil.example` as the host; the userinfo is refused outright anyway.
    assert httpx.URL("http://127.0.0.1@evil.example/").host == "evil.example"


def test_check_address_classes() -> None:
    check_address(ipaddress.ip_address("8.8.8.8"), allow_private=False)
    check_address(ipaddress.ip_address("2001:4860:4860::8888"), allow_private=False)
    with pytest.raises(DestinationRefused, match="fe80::1 is a link-local address"):
        check_address(ipaddress.ip_address("fe80::1"), allow_private=False)


class FakeResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[host]


class Recorder:
    """The transport under the pinned one: records what reached it, answers 204."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(204)


def pinned_client(resolver: FakeResolver, recorder: Recorder, *, allow_private: bool = False) -> httpx.Client:
    transport = PinnedTransport(allow_private=allow_private, resolver=resolver, inner=httpx.MockTransport(recorder))
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)


@pytest.mark.parametrize(
    ("answers", "code"),
    [
        (["10.1.2.3"], "private"),
        (["127.0.0.1"], "loopback"),
        (["169.254.169.254"], "metadata"),
        (["fd00:ec2::254"], "metadata"),
        (["::1"], "loopback"),
        (["93.184.216.34", "192.168.0.1"], "private"),  # one bad answer refuses them all
        (["fe80::1%eth0"], "link_local"),
    ],
)
def test_names_resolving_to_refused_addresses_are_never_contacted(answers: list[str], code: str) -> None:
    resolver, recorder = FakeResolver({"hooks.example.com": answers}), Recorder()
    with pinned_client(resolver, recorder) as client, pytest.raises(DestinationRefused) as info:
        client.post("https://hooks.example.com/x", content=b"{}")
    assert info.value.code == code
    assert resolver.calls == [("hooks.example.com", 443)]
    assert recorder.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
     "http://metadata.google.internal/", "http://2130706433/", "http://127.0.0.1@evil.example/"],
)  # fmt: skip
def test_refused_literals_and_names_are_neither_resolved_nor_contacted(url: str) -> None:
    resolver, recorder = FakeResolver({}), Recorder()
    with pinned_client(resolver, recorder) as client, pytest.raises(DestinationRefused):
        client.post(url, content=b"{}")
    assert resolver.calls == []
    assert recorder.requests == []


def test_connects_to_the_checked_address_with_the_name_as_host_and_sni() -> None:
    answers = iter([["93.184.216.34"], ["10.0.0.1"]])  # a rebinding resolver: the second answer is private
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    recorder = Recorder()
    transport = PinnedTransport(allow_private=False, resolver=resolver, inner=httpx.MockTransport(recorder))
    with httpx.Client(transport=transport, trust_env=False) as client:
        assert client.post("https://hooks.example.com:8443/a?b=1", content=b"{}").status_code == 204
    assert calls == ["hooks.example.com"]  # resolved once, and the connection went to that answer
    (request,) = recorder.requests
    assert str(request.url) == "https://93.184.216.34:8443/a?b=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"


def test_ipv6_answer_is_pinned_in_brackets() -> None:
    recorder = Recorder()
    resolver = FakeResolver({"hooks.example.com": ["2606:4700::1111"]})
    with pinned_client(resolver, recorder) as client:
        client.post("http://hooks.example.com/a", content=b"{}")
    assert str(recorder.requests[0].url) == "http://[2606:4700::1111]/a"


def test_resolution_failure_is_a_connection_error() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pinned_client(resolver, Recorder()) as client, pytest.raises(httpx.ConnectError, match="cannot resolve"):  # type: ignore[arg-type]
        client.post("http://hooks.example.com/", content=b"{}")


def test_destination_id_hides_path_and_query() -> None:
    url = "https://hooks.slack.com/services/T000/B000/SECRETSECRET"
    ident = destination_id(url)
    assert ident.startswith("https://hooks.slack.com#") and len(ident.split("#")[1]) == 12
    assert "SECRET" not in ident
    assert destination_id(url) == ident
    assert destination_id(url + "x") != ident
    assert destination_id("http://[::1]:8080/a", "ops").startswith("ops#")
    assert destination_id("http://127.0.0.1:8080/a").startswith("http://127.0.0.1:8080#")


def test_settings_refuse_a_private_webhook_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"alert_webhooks\[1\]\.url: 10\.0\.0\.1 is a private address"):
        Settings(alert_webhooks=[{"url": "https://hooks.example.com/a"}, {"url": "http://10.0.0.1/b"}])
    with pytest.raises(ValidationError, match=r"alert_webhooks\[0\]\.url: scheme 'ftp' is not http or https"):
        Settings(alert_webhooks=[{"url": "ftp://hooks.example.com/"}])
    with pytest.raises(ValidationError, match=r"alert_webhooks\[0\]\.url: 169\.254\.169\.254 is a cloud metadata"):
        Settings(alert_webhooks=[{"url": "http://169.254.169.254/"}], alert_allow_private_destinations=True)
    with pytest.raises(ValidationError, match="format"):
        Settings(alert_webhooks=[{"url": "https://hooks.example.com/", "format": "teams"}])
    ok = Settings(
        alert_webhooks=[{"url": "http://10.0.0.1/b", "format": "slack"}], alert_allow_private_destinations=True
    )
    assert ok.alert_webhooks[0].format == "slack"


def test_settings_read_webhooks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AGENTLEDGER_ALERT_WEBHOOKS",
        '[{"url": "https://hooks.example.com/a", "format": "slack", "name": "ops"}, {"url": "https://b.example/"}]',
    )
    settings = Settings()
    assert [(w.url, w.format, w.name) for w in settings.alert_webhooks] == [
        ("https://hooks.example.com/a", "slack", "ops"),
        ("https://b.example/", "json", ""),
    ]
