"""`llmscratch eval judge` against a stand-in OpenAI-compatible server started here: scores
parsed, non-numbers unscored (never 0), retries after a failed call, every line written as
it comes, and one line when the judge is down or refuses."""

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmscratch.cli import main
from llmscratch.evaluation.judge import parse_score
from llmscratch.runs.run import Run


class StandIn(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted (status, body); records what it was sent."""

    script: list = []
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        type(self).received.append((self.path, json.loads(self.rfile.read(length))))
        status, body = type(self).script.pop(0) if type(self).script else (200, "50")
        if isinstance(body, str) and status == 200 and not body.startswith("<"):
            body = json.dumps({"choices": [{"message": {"role": "assistant",
                                                        "content": body}}]})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    StandIn.script, StandIn.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def judge_args(run, endpoint, *more):
    return ["eval", "judge", "--run", str(run), "--data", "synthetic", "--endpoint", endpoint,
            "--model", "stand-in", "--limit", "4", "--max-new-tokens", "4", "--retries", "2",
            "--backoff", "0", *more]


def test_scores_unscored_and_retries(tiny_run, judge_server, capsys):
    StandIn.script = [(503, "busy"), (200, "85"), (200, "Score: 40"),
                      (200, "I would say it is quite good"), (200, "<html>garbage</html>")]
    assert main(judge_args(tiny_run, judge_server, "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"] == {"mean_score": 62.5, "scored": 2, "unscored": 2}
    lines = [json.loads(line) for line in
             Run(tiny_run).eval_examples_path("judge").read_text().splitlines()]
    assert [line["score"] for line in lines] == [85, 40, None, None]
    assert "Respond with the integer number only" in lines[0]["judge_prompt"]
    assert lines[0]["reference"] in lines[0]["judge_prompt"]
    path, body = StandIn.received[0]
    assert path == "/v1/chat/completions" and len(StandIn.received) == 5  # one retry
    assert body["temperature"] == 0 and body["seed"] == 123 and body["model"] == "stand-in"
    saved = json.loads(Run(tiny_run).eval_result_path("judge").read_text())
    assert saved["complete"] and saved["metrics"]["unscored"] == 2


@pytest.fixture
def own_run(tiny_run, tmp_path):
    """A copy of the tiny run, whose eval/ starts empty."""
    shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
    return tmp_path / "run"


def results(run):
    """The judge's files in the run, by name, with their bytes."""
    return {p.name: p.read_bytes() for p in sorted(Run(run).eval_dir.glob("judge*"))}


def test_a_judge_that_is_down_is_one_line_and_keeps_what_was_judged(own_run, judge_server,
                                                                    capsys):
    StandIn.script = [(200, "70"), (500, "x"), (500, "x"), (500, "x")]
    code = main(judge_args(own_run, judge_server))
    err = capsys.readouterr().err
    assert code == 2 and "failed 3 times (HTTP 500)" in err and len(err.splitlines()) == 1
    lines = Run(own_run).eval_examples_path("judge").read_text().splitlines()
    assert [json.loads(line)["score"] for line in lines] == [70]  # written before the failure
    saved = json.loads(Run(own_run).eval_result_path("judge").read_text())
    assert not saved["complete"] and saved["metrics"]["scored"] == 1


def test_a_failed_or_empty_evaluation_leaves_earlier_results(own_run, judge_server, capsys):
    StandIn.script = [(200, "80")] * 4
    assert main(judge_args(own_run, judge_server)) == 0
    capsys.readouterr()
    earlier = results(own_run)
    assert json.loads(earlier["judge.json"])["metrics"]["mean_score"] == 80
    # The judge fails halfway: what it scored is not worth a complete result.
    StandIn.script = [(200, "10"), (500, "x"), (500, "x"), (500, "x")]
    assert main(judge_args(own_run, judge_server)) == 2
    err = capsys.readouterr().err
    assert "failed 3 times" in err and "were left as they were" in err
    assert len(err.splitlines()) == 1
    assert {k: v for k, v in results(own_run).items() if not k.endswith(".partial")} == earlier
    # Every reply unusable: no score is not a score of 0, and not a success.
    StandIn.script = [(200, "I cannot grade this")] * 4
    assert main(judge_args(own_run, judge_server, "--json")) == 2
    out, err = capsys.readouterr()
    assert out == "" and "was a score" in err and "for any of 4 responses" in err
    assert {k: v for k, v in results(own_run).items() if not k.endswith(".partial")} == earlier
    replies = Run(own_run).eval_dir / "judge.examples.jsonl.partial"
    assert [json.loads(line)["judge_reply"] for line in replies.read_text().splitlines()] \
        == ["I cannot grade this"] * 4  # kept to be read, beside the results
    # A refused connection before any reply: nothing changes.
    StandIn.script = [(404, "no such model")]
    assert main(judge_args(own_run, judge_server)) == 2
    assert "left as they were" in capsys.readouterr().err
    assert {k: v for k, v in results(own_run).items() if not k.endswith(".partial")} == earlier


def test_no_server_and_a_refusal(tiny_run, judge_server, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    assert main(judge_args(tiny_run, closed)) == 2
    assert "failed 3 times (ConnectError" in capsys.readouterr().err
    StandIn.script = [(404, '{"error": "model stand-in not found"}')]
    assert main(judge_args(tiny_run, judge_server)) == 2
    err = capsys.readouterr().err
    assert "answered HTTP 404" in err and "not found" in err
    assert main(judge_args(tiny_run, "localhost:1")) == 2
    assert "must be an http:// or https:// URL" in capsys.readouterr().err


def test_parse_score():
    assert parse_score(" 85\n") == 85 and parse_score("Score: 7.5") == 7.5
    assert parse_score("100.") == 100
    for reply in ("", "eighty", "85 because it is right", "101", "-3"):
        assert parse_score(reply) is None
