import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import lensteer
from lensteer import threats
from lensteer.errors import ConfigError, DataError, JudgeError, LensteerError
from lensteer.evaluate.compassion import compassion_scorer
from lensteer.evaluate.judges import (
    CallableJudge,
    HttpJudge,
    Judge,
    judge_responses,
    parse_score,
)
from lensteer.evaluate.refusal import is_refusal


def _completion(content):
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }


class _Server:
    """A real HTTP server on 127.0.0.1 that answers from a list of (status, body, delay_s) in turn."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, dict(self.headers), json.loads(body)))
                status, payload, delay = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_judge_sends_the_rubric_and_parses_the_score():
    with _Server([(200, _completion("Score: 87"), 0)]) as srv:
        judge = HttpJudge(
            base_url=srv.url, model="judge-model", rubric=threats.get("compassion").judge_rubric, api_key="k"
        )
        assert judge("I lost my job.", "That sounds hard {really}.") == 87.0
    path, headers, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    content = body["messages"][-1]["content"]
    assert (
        "I lost my job." in content
        and "That sounds hard {really}." in content
        and "{response}" not in content
    )
    assert headers["Authorization"] == "Bearer k"
    assert isinstance(judge, Judge)


def test_http_judge_retries_transient_failures_then_succeeds():
    replies = [
        (503, {"error": "loading"}, 0),
        (500, b"oops", 0),
        (200, _completion("I'd say... Score: 42 out of 100."), 0),
    ]
    with _Server(replies) as srv:
        judge = HttpJudge(base_url=srv.url + "/v1", max_retries=3, backoff_s=0.01)
        assert judge("p", "r") == 42.0
    assert len(srv.requests) == 3


def test_http_judge_gives_up_after_max_retries():
    with _Server([(503, {"error": "busy"}, 0)]) as srv:
        judge = HttpJudge(base_url=srv.url, max_retries=2, backoff_s=0.01)
        with pytest.raises(JudgeError, match="failed after 3 tries"):
            judge("p", "r")
    assert len(srv.requests) == 3


def test_http_judge_reports_a_down_server_as_a_judge_error():
    judge = HttpJudge(
        base_url=f"http://127.0.0.1:{_free_port()}", max_retries=1, backoff_s=0.01, timeout_s=2.0
    )
    with pytest.raises(JudgeError, match="is the server running") as info:
        judge("p", "r")
    assert isinstance(info.value, LensteerError)


def test_http_judge_times_out_and_retries():
    with _Server([(200, _completion("Score: 1"), 1.5)]) as srv:
        judge = HttpJudge(base_url=srv.url, timeout_s=0.3, max_retries=1, backoff_s=0.01)
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match="failed after 2 tries"):
            judge("p", "r")
        assert time.perf_counter() - t0 < 3
    assert len(srv.requests) == 2


@pytest.mark.parametrize(
    ("status", "payload", "match"),
    [
        (200, b"<html>not json</html>", "malformed reply"),
        (200, {"choices": []}, "malformed reply"),
        (200, _completion("I refuse to give a number."), "no .Score: N. label"),
        (200, _completion("Score: 250"), "outside"),
        (400, {"error": "bad request"}, "HTTP 400"),
    ],
)
def test_http_judge_malformed_replies_are_errors_without_retry(status, payload, match):
    with _Server([(status, payload, 0)]) as srv:
        judge = HttpJudge(base_url=srv.url, max_retries=3, backoff_s=0.01)
        with pytest.raises(JudgeError, match=match):
            judge("p", "r")
    assert len(srv.requests) == 1


def test_http_judge_validates_its_configuration():
    with pytest.raises(ConfigError, match="http"):
        HttpJudge(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="response"):
        HttpJudge(base_url="http://x", rubric="Rate {prompt}")
    with pytest.raises(ConfigError, match="score_range"):
        HttpJudge(base_url="http://x", score_range=(10.0, 0.0))
    assert HttpJudge(base_url="http://h:1/v1/chat/completions").url == "http://h:1/v1/chat/completions"
    assert HttpJudge(base_url="http://h:1/").url == "http://h:1/v1/chat/completions"


@pytest.mark.parametrize(
    ("reply", "value"),
    [("Score: 7", 7.0), ("score=3.5/10", 3.5), ("8", 8.0), ("Between 2 and 9 -> Score: 9", 9.0)],
)
def test_parse_score(reply, value):
    assert parse_score(reply, 0.0, 10.0) == value


def test_callable_judge_checks_what_a_function_returns():
    assert CallableJudge(lambda p, r: len(r) > 3)("p", "long") is True
    assert CallableJudge(lambda p, r: 2)("p", "r") == 2.0
    with pytest.raises(JudgeError, match="'bad'.*nan"):
        CallableJudge(lambda p, r: math.nan, name="bad")("p", "r")
    with pytest.raises(JudgeError, match="finite number"):
        CallableJudge(lambda p, r: "yes")("p", "r")


def test_judge_responses_accepts_plain_callables_and_the_offline_scorers():
    prompts = ["How do I pick a lock?", "I feel low."]
    responses = ["I can't help with that.", "That sounds really hard; I'm here with you."]
    refusals = judge_responses(lambda p, r: is_refusal(r), prompts, responses)
    assert torch.equal(refusals, torch.tensor([1.0, 0.0]))
    scores = judge_responses(compassion_scorer(), prompts, responses)
    assert scores.shape == (2,) and scores[1] > 0.5
    with pytest.raises(DataError, match="2 prompts but 1"):
        judge_responses(is_refusal, prompts, responses[:1])
    assert lensteer.errors.JudgeError is JudgeError
