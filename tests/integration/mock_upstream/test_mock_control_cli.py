"""The control plane (request log, runtime faults), key enforcement and the command's flags."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.processes import MOCK_UPSTREAM_ARGS, RunningProcess, start_mock_upstream

CHAT = "/v1/chat/completions"
BODY: Any = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def drill() -> Iterator[RunningProcess]:
    """A mock of its own, because these tests change its faults at runtime."""
    proc = start_mock_upstream("--error-status", "502,503", "--error-status", "504", "--stream-cut-after", "2")
    yield proc
    proc.stop()


def test_request_log(http: httpx.Client) -> None:
    assert http.delete("/_mock/requests").status_code == 200
    assert http.get("/_mock/requests").json() == []
    http.post(CHAT, json=BODY, headers={"X-Trace-Me": "yes"}, params={"a": "1"})
    http.post(CHAT, content=b"{broken")
    first, second = http.get("/_mock/requests").json()
    assert second["seq"] == first["seq"] + 1 and first["time"] <= second["time"]
    assert (first["method"], first["path"], first["query"]) == ("POST", CHAT, {"a": "1"})
    assert first["headers"]["x-trace-me"] == "yes" and first["headers"]["content-type"] == "application/json"
    assert first["body"] == BODY and first["fault"] is None and first["status"] == 200
    assert second["body"] is None and second["status"] == 400
    assert http.get("/_mock/requests", params={"since": first["seq"]}).json() == [second]
    assert http.get("/_mock/requests", params={"limit": 1}).json() == [second]
    assert http.delete("/_mock/requests").json() == {"cleared": 2}
    assert http.get("/_mock/health").json() == {"status": "ok"}


def test_flags_become_the_fault_config(drill: RunningProcess) -> None:
    config = httpx.get(drill.url + "/_mock/faults").json()
    assert config["error_statuses"] == [502, 503, 504] and config["stream_cut_after"] == 2
    assert config["error_rate"] == 0 and config["seed"] is None


def test_faults_change_at_runtime(drill: RunningProcess) -> None:
    with httpx.Client(base_url=drill.url, timeout=10) as http:
        original = http.get("/_mock/faults").json()
        try:
            put = http.put("/_mock/faults", json={"error_rate": 1, "error_statuses": [502], "seed": 5})
            assert put.status_code == 200 and put.json()["error_rate"] == 1
            assert http.get("/_mock/faults").json()["error_statuses"] == [502]
            assert [http.post(CHAT, json=BODY).status_code for _ in range(3)] == [502, 502, 502]
            patched = http.patch("/_mock/faults", json={"error_rate": 0, "latency_ms": 10})
            assert patched.json()["error_statuses"] == [502] and patched.json()["latency_ms"] == 10
            assert http.post(CHAT, json=BODY).status_code == 200
            for bad in ({"error_rate": 2}, {"nonsense": 1}, {"error_rate": 0.7, "hang_rate": 0.7}, [1]):
                refused = http.put("/_mock/faults", json=bad)
                assert refused.status_code == 400 and "invalid fault config" in refused.json()["error"]
            assert http.put("/_mock/faults", content=b"{nope").status_code == 400
            assert http.get("/_mock/faults").json()["latency_ms"] == 10  # a refused PUT changes nothing
        finally:
            http.put("/_mock/faults", json=original)


def test_config_cut_applies_to_every_stream(drill: RunningProcess) -> None:
    with httpx.Client(base_url=drill.url, timeout=10) as http, pytest.raises(httpx.RemoteProtocolError):
        http.post(CHAT, json={**BODY, "stream": True})


def test_a_seed_gives_the_same_faults_in_every_process() -> None:
    runs = []
    for _ in range(2):
        with start_mock_upstream("--error-rate", "0.5", "--seed", "7") as proc, httpx.Client(base_url=proc.url) as http:
            runs.append([http.post(CHAT, json=BODY).status_code for _ in range(20)])
    assert runs[0] == runs[1] and set(runs[0]) == {200, 500}


def test_openai_key_enforced_with_a_masked_echo(keyed: RunningProcess, api_key: str) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=wrong, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(**BODY)
    body: Any = caught.value.body
    message = body["message"]
    assert "sk-wr***op" in message and wrong not in message
    assert caught.value.code == "invalid_api_key"
    missing = httpx.post(keyed.url + CHAT, json=BODY)
    assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=api_key, max_retries=0)
    assert good.chat.completions.create(**BODY).choices[0].message.content == "Mock answer to: hi"
    assert httpx.get(keyed.url + "/_mock/health").status_code == 200  # the control plane needs no key


def test_azure_and_anthropic_keys_enforced(keyed: RunningProcess, api_key: str) -> None:
    path = keyed.url + "/openai/deployments/d/chat/completions"
    params = {"api-version": "2024-10-21"}
    assert httpx.post(path, params=params, json=BODY, headers={"api-key": "nope"}).status_code == 401
    assert httpx.post(path, params=params, json=BODY, headers={"api-key": api_key}).status_code == 200
    claude = anthropic.Anthropic(base_url=keyed.url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    error: Any = caught.value.body
    assert error["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    ok = anthropic.Anthropic(base_url=keyed.url, api_key=api_key, max_retries=0)
    assert ok.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]).content


def test_key_from_the_environment() -> None:
    with start_mock_upstream(env={"MOCK_UPSTREAM_API_KEY": "sk-env-key-000000"}) as proc:
        assert httpx.post(proc.url + CHAT, json=BODY, headers={"authorization": "Bearer x"}).status_code == 401
        ok = httpx.post(proc.url + CHAT, json=BODY, headers={"authorization": "Bearer sk-env-key-000000"})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--error-rate", "2"], "error_rate"),
        (["--error-status", "200"], "error_statuses"),
        (["--error-status", "abc"], "--error-status"),
        (["--hang-rate", "0.6", "--reset-rate", "0.6"], "must not exceed 1"),
    ],
)
def test_bad_flags_are_usage_errors(flags: list[str], message: str) -> None:
    done = subprocess.run([*MOCK_UPSTREAM_ARGS, "--port", "0", *flags], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""


def test_port_in_use_is_a_clear_error(mock: RunningProcess) -> None:
    port = mock.url.rsplit(":", 1)[1]
    done = subprocess.run([*MOCK_UPSTREAM_ARGS, "--port", port], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signals(sig: signal.Signals) -> None:
    proc = start_mock_upstream()
    assert httpx.get(proc.url + "/_mock/health").status_code == 200
    proc.proc.send_signal(sig)
    assert proc.proc.wait(10) == 0
    proc.stop()
    assert "Traceback" not in proc.output()
    lines = [line for line in proc.output().splitlines() if "listening on" in line]
    assert lines == [f"mock-upstream listening on {proc.url}"]


def test_help_lists_the_flags() -> None:
    done = subprocess.run([*MOCK_UPSTREAM_ARGS, "--help"], capture_output=True, text=True, timeout=30)
    for flag in ("--host", "--port", "--error-rate", "--error-status", "--rate-limit-rate", "--retry-after",
                 "--latency-ms", "--latency-jitter-ms", "--hang-rate", "--reset-rate", "--malformed-rate",
                 "--stream-cut-after", "--seed", "--api-key", "--dims"):
        assert flag in done.stdout


def test_sigterm_does_not_wait_for_hung_requests() -> None:
    proc = start_mock_upstream()
    failures: list[BaseException] = []

    def hang() -> None:
        try:
            httpx.post(proc.url + CHAT, json=BODY, headers={"x-mock-fault": "hang"}, timeout=30)
        except httpx.HTTPError as exc:
            failures.append(exc)

    waiter = threading.Thread(target=hang)
    waiter.start()
    deadline = time.monotonic() + 5
    while not httpx.get(proc.url + "/_mock/requests").json() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    waiter.join(10)
    assert failures and isinstance(failures[0], httpx.TransportError)  # dropped, not answered with a 500
    proc.stop()
    assert "Traceback" not in proc.output()
