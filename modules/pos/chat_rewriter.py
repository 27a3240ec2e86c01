"""Prompt rewriting through an OpenAI-compatible chat-completions endpoint (POS "reference-guided rewriting").

The request is the standard `POST <url>` with `{"model", "messages": [system, user], "temperature",
"max_tokens"}`; the rewritten prompt is `choices[0].message.content`. Only the standard library is used (urllib).
Failures never stop sampling: after the configured retries (connection errors, time-outs, HTTP 429 and 5xx are
retried; other HTTP errors are not) or on an unusable reply, the original prompt is used and a warning names
the reason.

The user message holds the prompt and, when retrieval is on, the retrieved video's caption as a reference for
the kind of detail real videos show (our reading of "reference-guided"; the system prompt tells the model not to
copy its content).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from modules.pos.rewriters import PromptRewriter

log = logging.getLogger(__name__)

RETRIED_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RewriteError(RuntimeError):
    """The endpoint gave no usable rewrite."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class ChatCompletionsRewriter(PromptRewriter):
    """Rewrite prompts with a chat model behind an OpenAI-compatible `/chat/completions` URL.

    Args:
        url: the full endpoint URL, e.g. `http://127.0.0.1:8000/v1/chat/completions`.
        model: model name sent in the request.
        system_prompt: the enrichment instructions.
        api_key_env: name of the environment variable holding a bearer token; None or unset sends none.
        timeout_s: seconds per request (connect and read).
        max_retries: further attempts after a retryable failure (total requests <= 1 + max_retries).
        retry_backoff_s: sleep before retry i is retry_backoff_s * 2 ** (i - 1).
        temperature: sampling temperature sent in the request.
        max_tokens: reply length cap sent in the request.
        max_prompt_chars: a longer reply is treated as unusable (a chat model that answers in paragraphs).
    """

    def __init__(
        self,
        url: str,
        model: str,
        system_prompt: str,
        api_key_env: str | None = None,
        timeout_s: float = 20.0,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        temperature: float = 0.2,
        max_tokens: int = 120,
        max_prompt_chars: int = 400,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"rewriter.url must be an http(s) URL, got {url!r}")
        if timeout_s <= 0 or max_retries < 0 or retry_backoff_s < 0:
            raise ValueError(
                "rewriter: timeout_s must be > 0, max_retries and retry_backoff_s >= 0; got "
                f"{timeout_s}, {max_retries}, {retry_backoff_s}"
            )
        self.url = url
        self.model = model
        self.system_prompt = system_prompt
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_prompt_chars = max_prompt_chars

    def rewrite(self, prompt: str, reference: str | None = None) -> str:
        """The endpoint's rewrite, or `prompt` itself (with a warning) when none could be had."""
        body = json.dumps(self.request_body(prompt, reference)).encode("utf-8")
        failure = ""
        for attempt in range(1 + self.max_retries):
            if attempt:
                time.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                return self._ask(body)
            except RewriteError as error:
                failure = str(error)
                if not error.retry:
                    break
        log.warning(
            "prompt rewriting failed (%s); using the original prompt %r <rewriter.url=%s>",
            failure,
            prompt,
            self.url,
        )
        return prompt

    def request_body(self, prompt: str, reference: str | None) -> dict[str, Any]:
        """The chat-completions request for one prompt."""
        user = f"Prompt: {prompt}"
        if reference:
            user += f"\nReference caption of a related video: {reference}"
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = os.environ.get(self.api_key_env) if self.api_key_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _ask(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise RewriteError(
                f"HTTP {error.code} {error.reason}", retry=error.code in RETRIED_HTTP_STATUS
            ) from error
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise RewriteError(f"{type(error).__name__}: {reason}", retry=True) from error
        return self._content(payload)

    def _content(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as error:
            raise RewriteError(f"unexpected reply ({type(error).__name__}: {error})", retry=False) from error
        if not isinstance(content, str):
            raise RewriteError("the reply's content is not text", retry=False)
        rewritten = " ".join(content.split()).strip("\"' ")
        if not rewritten:
            raise RewriteError("empty rewrite", retry=False)
        if len(rewritten) > self.max_prompt_chars:
            raise RewriteError(f"rewrite of {len(rewritten)} characters > max_prompt_chars", retry=False)
        return rewritten

    def __repr__(self) -> str:
        return f"ChatCompletionsRewriter(url={self.url!r}, model={self.model!r})"
