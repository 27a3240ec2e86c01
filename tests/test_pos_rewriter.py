"""POS prompt rewriters: the offline template rules, and the chat-completions client against a local HTTP server on
127.0.0.1 (success, and the fallback to the original prompt on every kind of failure, with bounded requests)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from modules.pos.chat_rewriter import ChatCompletionsRewriter
from modules.pos.rewriters import NoRewriter, TemplateRewriter
from tests.conftest import CONF_DIR

PROMPT = "a panda is playing guitar in the bar"


# ---------------------------------------------------------------- template and none


def test_template_rewriter_appends_rule_details_and_keeps_the_prompt():
    rewriter = instantiate(OmegaConf.load(CONF_DIR / "rewriter" / "template.yaml"))
    rewritten = rewriter.rewrite("a red circle moving left")
    assert rewritten.startswith("a red circle moving left, ")
    assert rewritten == (
        "a red circle moving left, smooth natural motion, crisp clean edges, steady direction, high quality, "
        "sharp focus"
    )
    assert rewriter.rewrite(PROMPT, reference="a bear dancing in the snow") == (
        f"{PROMPT}, smooth natural motion, highly detailed, detailed background, high quality, sharp focus"
    )


def test_template_rewriter_skips_present_phrases_and_respects_the_word_budget():
    rewriter = TemplateRewriter(
        rules=[{"keywords": ["cat"], "detail": "fluffy fur"}, {"keywords": ["cat"], "detail": "green eyes"}],
        suffix=["high quality"],
        max_words=6,
    )
    assert rewriter.rewrite("a cat with fluffy fur") == "a cat with fluffy fur"  # +2 words would exceed 6
    assert rewriter.rewrite("a Cat") == "a Cat, fluffy fur, green eyes"
    assert rewriter.rewrite("a dog, high quality") == "a dog, high quality"
    with pytest.raises(ValueError, match=r"rules\[0\]"):
        TemplateRewriter(rules=[{"keywords": [], "detail": "x"}])


def test_no_rewriter_and_rewrite_all():
    rewriter = instantiate(OmegaConf.load(CONF_DIR / "rewriter" / "none.yaml"))
    assert isinstance(rewriter, NoRewriter)
    assert rewriter.rewrite_all(["a", "b"], ["ref", None]) == ["a", "b"]
    with pytest.raises(ValueError, match="references"):
        rewriter.rewrite_all(["a"], [])


# ---------------------------------------------------------------- chat client


class FakeEndpoint:
    """A chat-completions endpoint on 127.0.0.1 whose reply is `respond(request_number, body) -> (status, bytes)`."""

    def __init__(self, respond: Callable[[int, dict], tuple[int, bytes]], delay_s: float = 0.0) -> None:
        self.requests: list[tuple[dict, dict]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append((body, dict(self.headers)))
                status, payload = respond(len(endpoint.requests), body)
                time.sleep(delay_s)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (time-out tests)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def endpoint() -> Iterator[Callable[..., FakeEndpoint]]:
    servers: list[FakeEndpoint] = []

    def start(respond: Callable[[int, dict], tuple[int, bytes]], delay_s: float = 0.0) -> FakeEndpoint:
        servers.append(FakeEndpoint(respond, delay_s))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def reply(content: object) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def client(url: str, **overrides: object) -> ChatCompletionsRewriter:
    config = OmegaConf.load(CONF_DIR / "rewriter" / "chat.yaml")
    config.url = url
    config.retry_backoff_s = 0.0
    config.timeout_s = 2.0
    config.api_key_env = "POS_TEST_TOKEN"
    for key, value in overrides.items():
        config[key] = value
    return instantiate(config)


def test_chat_rewriter_sends_the_instructions_and_reference_and_returns_the_rewrite(endpoint, monkeypatch):
    server = endpoint(
        lambda number, body: (200, reply('  "A fluffy panda playing an acoustic guitar in a dim bar"\n'))
    )
    monkeypatch.setenv("POS_TEST_TOKEN", "token-123")
    rewritten = client(server.url).rewrite(PROMPT, reference="a man plays guitar on stage")
    assert rewritten == "A fluffy panda playing an acoustic guitar in a dim bar"
    ((body, headers),) = server.requests
    assert body["model"] == "gpt-3.5-turbo"
    system, user = body["messages"]
    assert system["role"] == "system" and "Keep the subject" in system["content"]
    assert user == {
        "role": "user",
        "content": f"Prompt: {PROMPT}\nReference caption of a related video: a man plays guitar on stage",
    }
    assert headers["Authorization"] == "Bearer token-123"


@pytest.mark.parametrize(
    "status, payload, expected_requests",
    [
        (500, b"{}", 3),  # retried: 1 + max_retries requests
        (429, b"{}", 3),
        (400, b'{"error": "bad request"}', 1),  # not retried
        (200, b"not json", 1),
        (200, reply(""), 1),
        (200, reply(None), 1),
        (200, b'{"choices": []}', 1),
        (200, reply("x" * 500), 1),
    ],
)
def test_failing_endpoint_falls_back_to_the_original_prompt(
    endpoint, caplog, status, payload, expected_requests
):
    server = endpoint(lambda number, body: (status, payload))
    with caplog.at_level(logging.WARNING, logger="modules.pos.chat_rewriter"):
        assert client(server.url, max_retries=2).rewrite(PROMPT) == PROMPT
    assert len(server.requests) == expected_requests
    assert "using the original prompt" in caplog.text and "rewriter.url" in caplog.text


def test_a_transient_failure_is_retried(endpoint):
    server = endpoint(lambda number, body: (503, b"{}") if number == 1 else (200, reply("a detailed panda")))
    assert client(server.url, max_retries=1).rewrite(PROMPT) == "a detailed panda"
    assert len(server.requests) == 2


def test_a_slow_endpoint_times_out_and_falls_back(endpoint, caplog):
    server = endpoint(lambda number, body: (200, reply("too late")), delay_s=0.6)
    with caplog.at_level(logging.WARNING, logger="modules.pos.chat_rewriter"):
        assert client(server.url, timeout_s=0.2, max_retries=1).rewrite(PROMPT) == PROMPT
    assert len(server.requests) == 2
    assert "timed out" in caplog.text.lower()


def test_an_unreachable_endpoint_falls_back(caplog):
    with socket.socket() as sock:  # a free local port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="modules.pos.chat_rewriter"):
        rewritten = client(f"http://127.0.0.1:{port}/v1/chat/completions", max_retries=1).rewrite(PROMPT)
    assert rewritten == PROMPT
    assert "URLError" in caplog.text


def test_chat_rewriter_validates_its_config():
    with pytest.raises(ValueError, match="http"):
        ChatCompletionsRewriter("ftp://127.0.0.1/x", "model", "system")
    with pytest.raises(ValueError, match="timeout_s"):
        ChatCompletionsRewriter("http://127.0.0.1:1/x", "model", "system", timeout_s=0)
