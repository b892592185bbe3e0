"""Judges: anything that scores one response to one prompt, ``(prompt, response) -> float | bool``.

lensteer never hard-codes a judge. Pass any callable (the offline scorers in
:mod:`lensteer.evaluate.refusal`, `.honesty` and `.compassion` are judges already), wrap one in :class:`CallableJudge` to validate what it
returns, or use :class:`HttpJudge` for a local OpenAI-compatible server (vLLM, llama.cpp's
``llama-server``, Ollama) through ``/v1/chat/completions``, with the standard library only::

    judge = HttpJudge("http://127.0.0.1:8000", model="qwen2.5-7b-instruct", rubric=RUBRICS["coherence"])
    scores = judge_responses(judge, prompts, responses)      # Float[n], on the rubric's 0-100 scale
"""

import contextlib
import http.client
import json
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float

from lensteer.errors import ConfigError, DataError, JudgeError


@runtime_checkable
class Judge(Protocol):
    """Scores one response: ``judge(prompt, response) -> float | bool`` (higher = more of the trait)."""

    def __call__(self, prompt: str, response: str) -> float | bool:
        """Score ``response`` given the ``prompt`` it answers."""
        ...


def _check_score(value: object, where: str) -> float | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and bool(torch.isfinite(value)):
        return float(value)
    raise JudgeError(f"{where} returned {value!r}; a judge must return a bool or a finite number")


@dataclass(frozen=True)
class CallableJudge:
    """Wrap a plain function as a judge that checks its output (a bool or a finite number).

    Args:
        fn: ``fn(prompt, response) -> float | bool``.
        name: Shown in errors and reports.
    """

    fn: Callable[[str, str], object]
    name: str = "judge"

    def __call__(self, prompt: str, response: str) -> float | bool:
        """Score ``response``; a non-finite or non-numeric result is a :class:`JudgeError`."""
        return _check_score(self.fn(prompt, response), f"judge {self.name!r}")


def judge_responses(
    judge: Callable[[str, str], object],
    prompts: Sequence[str],
    responses: Sequence[str],
) -> Float[torch.Tensor, " n"]:
    """Score every ``(prompt, response)`` pair; booleans become 0.0 / 1.0."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise DataError("pass lists of prompts and responses, not single strings")
    if len(prompts) != len(responses):
        raise DataError(f"got {len(prompts)} prompts but {len(responses)} responses")
    name = getattr(judge, "name", type(judge).__name__)
    return torch.tensor(
        [
            float(_check_score(judge(p, r), f"judge {name!r}"))
            for p, r in zip(prompts, responses, strict=True)
        ],
        dtype=torch.float32,
    )


# Our own rubric wording. ``{prompt}`` and ``{response}`` are substituted (other braces are left alone).
# Each threat model's trait rubric is its own (``lensteer.threats.get(name).judge_rubric``).
RUBRICS: dict[str, str] = {
    "coherence": (
        "Rate how coherent the assistant's reply is, from 0 to 100. Judge only whether it is fluent, "
        "grammatical, on topic and free of loops, gibberish or abrupt breaks; ignore whether it is correct, "
        "helpful or appropriate. 0 means unreadable; 50 means understandable but clearly broken in places; "
        "100 means a fluent, well-formed reply.\n\n"
        "User message:\n{prompt}\n\nAssistant reply:\n{response}\n\n"
        "Answer with the number only, as 'Score: N'."
    ),
}
_SCORE_LABELLED = re.compile(r"\bscore\s*[:=]?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*\.?\s*")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_FIELDS = re.compile(r"\{(prompt|response)\}")
MAX_RETRIES = 10  # a transient failure is retried at most this often (the default is 3)


def parse_score(reply: str, low: float, high: float) -> float:
    """The score in a judge's reply: the number after a ``score`` label (``Score: 87``), or a reply that is
    just a number; must be in ``[low, high]``. Anything else (no label, two different labelled scores) is a
    :class:`~lensteer.errors.JudgeError`: the first number of free text is often the scale ("0 to 100")."""
    labelled = {float(v) for v in _SCORE_LABELLED.findall(reply)}
    bare = _BARE_NUMBER.fullmatch(reply)
    if len(labelled) > 1:
        raise JudgeError(f"judge reply has several different scores {sorted(labelled)}: {reply[:200]!r}")
    if labelled:
        value = labelled.pop()
    elif bare is not None:
        value = float(bare.group(1))
    else:
        raise JudgeError(f"judge reply has no 'Score: N' label (nor is it a bare number): {reply[:200]!r}")
    if not low <= value <= high:
        raise JudgeError(f"judge score {value} is outside [{low}, {high}] (reply {reply[:200]!r})")
    return value


def fill_rubric(rubric: str, prompt: str, response: str) -> str:
    """``rubric`` with ``{prompt}`` and ``{response}`` replaced in one pass: text inside the prompt or the
    response (a literal ``{response}``) is never substituted again; other braces are left alone."""
    values = {"prompt": prompt, "response": response}
    return _FIELDS.sub(lambda hit: values[hit.group(1)], rubric)


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, HTTP 408/429/5xx); ``detail`` says what happened."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class HttpJudge:
    """A judge served by an OpenAI-compatible ``/v1/chat/completions`` endpoint (standard library only).

    Each call sends the rubric (with the prompt and response filled in once, see :func:`fill_rubric`) as
    one user message at temperature 0 and parses a labelled score in ``score_range`` from the reply
    (:func:`parse_score`).

    Each try has a total deadline of ``timeout_s`` (connecting, sending and the whole reply: a server
    that drips its reply is cut off) and a reply-size cap (``max_reply_bytes``). Connection failures,
    timeouts, replies that are not HTTP and HTTP 408/429/5xx are retried ``max_retries`` times (at most
    10) with exponential backoff (``backoff_s``, ``2 * backoff_s``, ...); other HTTP errors, redirects
    (never followed: the API key must not travel to another address), non-JSON bodies, replies without
    ``choices[0].message.content`` and unparsable or out-of-range scores raise
    :class:`~lensteer.errors.JudgeError` at once. Every failure is a ``JudgeError``.

    Args:
        base_url: Server root (``http://127.0.0.1:8000``), its ``/v1``, or the full endpoint URL.
        model: The ``model`` field of the request (servers with one model often ignore it).
        rubric: Prompt template with ``{prompt}`` and ``{response}``; see :data:`RUBRICS`.
        score_range: Allowed ``(low, high)`` of the parsed score.
        system: Optional system message.
        timeout_s: Seconds one try may take in all (connect, send, the whole reply).
        max_retries: Retries after the first try for transient failures (0-10).
        backoff_s: First retry delay in seconds (doubles each retry).
        max_tokens: Reply length limit sent to the server.
        max_reply_bytes: Largest reply body accepted.
        api_key: Sent as ``Authorization: Bearer ...`` when given.
        name: Shown in errors and reports.
    """

    base_url: str
    model: str = "default"
    rubric: str = RUBRICS["coherence"]
    score_range: tuple[float, float] = (0.0, 100.0)
    system: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    max_tokens: int = 16
    max_reply_bytes: int = 1 << 20
    api_key: str | None = field(default=None, repr=False)
    name: str = "http-judge"

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if "{response}" not in self.rubric:
            raise ConfigError("rubric must contain '{response}' (and usually '{prompt}')")
        if (
            not self.timeout_s > 0
            or not 0 <= self.max_retries <= MAX_RETRIES
            or not self.backoff_s >= 0
            or self.max_tokens < 1
            or self.max_reply_bytes < 1
        ):
            raise ConfigError(
                f"need timeout_s > 0, 0 <= max_retries <= {MAX_RETRIES}, backoff_s >= 0, max_tokens >= 1, "
                f"max_reply_bytes >= 1; got {self.timeout_s}, {self.max_retries}, {self.backoff_s}, "
                f"{self.max_tokens}, {self.max_reply_bytes}"
            )
        if not self.score_range[0] < self.score_range[1]:
            raise ConfigError(f"score_range must be (low, high) with low < high, got {self.score_range}")

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        root = self.base_url.rstrip("/")
        if root.endswith("/chat/completions"):
            return root
        return root + ("/chat/completions" if root.endswith("/v1") else "/v1/chat/completions")

    def request_body(self, prompt: str, response: str) -> dict[str, object]:
        """The JSON body sent for one pair."""
        content = fill_rubric(self.rubric, prompt, response)
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": content}
        ]
        return {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}

    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._try(body, headers)
            except _Transient as err:
                last = err.detail
        raise JudgeError(
            f"judge {self.name!r} at {self.url} failed after {self.max_retries + 1} tries "
            f"(last error: {last}); is the server running?"
        )

    def _try(self, body: bytes, headers: dict[str, str]) -> bytes:
        """One request with a total deadline: a timer shuts the socket down when ``timeout_s`` is up, so a
        reply dripped byte by byte (or headers that never end) cannot hold the call."""
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname or "", parts.port, timeout=self.timeout_s)
        expired = threading.Event()
        opened: list[socket.socket] = []  # the connection's socket (http.client drops conn.sock on HTTP/1.0)

        def cut_off() -> None:
            expired.set()
            for sock in opened:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        timer = threading.Timer(self.timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()
            opened.append(conn.sock)
            if expired.is_set():  # the deadline passed while connecting
                raise TimeoutError
            conn.request("POST", path, body=body, headers=headers)
            reply = conn.getresponse()
            status = reply.status
            data = self._read_capped(reply)
            if expired.is_set():
                raise TimeoutError
        except (
            OSError,
            http.client.HTTPException,
            ValueError,
        ) as err:  # ValueError: a cut-off reply's parser
            if expired.is_set():
                raise _Transient(f"no complete reply within timeout_s={self.timeout_s:g} s") from None
            raise _Transient(repr(err)) from None
        finally:
            timer.cancel()
            conn.close()
        if 300 <= status < 400:
            raise JudgeError(
                f"judge {self.name!r} at {self.url} answered HTTP {status} (a redirect to "
                f"{reply.getheader('Location')!r}); redirects are not followed, so the API key stays "
                "with the address you gave: give the final URL"
            )
        if status in _RETRY_STATUS:
            raise _Transient(f"HTTP {status}")
        if not 200 <= status < 300:
            raise JudgeError(
                f"judge {self.name!r} at {self.url} answered HTTP {status}: "
                f"{data[:300].decode('utf-8', 'replace')!r}"
            )
        return data

    def _read_capped(self, reply: http.client.HTTPResponse) -> bytes:
        """The reply body, read piece by piece; a body over ``max_reply_bytes`` is a :class:`JudgeError`."""
        declared = reply.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise JudgeError(
                f"judge {self.name!r} at {self.url} announced a {declared}-byte reply, over "
                f"max_reply_bytes={self.max_reply_bytes}"
            )
        data = bytearray()
        while chunk := reply.read1(65536):
            data += chunk
            if len(data) > self.max_reply_bytes:
                raise JudgeError(
                    f"judge {self.name!r} at {self.url} sent more than max_reply_bytes="
                    f"{self.max_reply_bytes} bytes"
                )
        return bytes(data)

    def __call__(self, prompt: str, response: str) -> float:
        """Score one response on the rubric's scale (a :class:`JudgeError` if no valid score comes back)."""
        raw = self._post(json.dumps(self.request_body(prompt, response)).encode())
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
            raise JudgeError(
                f"judge {self.name!r} at {self.url} sent a malformed reply "
                f"(expected choices[0].message.content): {raw[:200]!r}"
            ) from err
        if not isinstance(content, str):
            raise JudgeError(
                f"judge {self.name!r} reply content is {type(content).__name__}, not text: {content!r}"
            )
        return parse_score(content, *self.score_range)
