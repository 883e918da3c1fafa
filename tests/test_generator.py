"""The description generator against a local OpenAI-compatible server (the real ``openai`` client, no network).

The server runs on 127.0.0.1 in a thread. Per class (recognised from the prompt) it follows a script of
answers: good JSON, malformed JSON, 429, 5xx, 400, or a sleep longer than the client timeout. It can also
reject response formats it does not support, with a 400 as local servers do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from spacil.descriptions import (
    ClassImages,
    DescriptionGenerationError,
    DescriptionGenerator,
    GenerationParameters,
    InvalidAnswer,
    MAX_PHRASES,
    MIN_PHRASES,
    PROMPT_VERSION,
    export_description_file,
    load_cache,
    load_description_file,
    parse_answer,
)

FAKE_KEY = "sk-test-NOT-A-REAL-KEY-7f3a9c"
CLIENT_TIMEOUT = 0.5
SERVER_SLEEP = 1.2


def phrases_for(name: str) -> list[str]:
    return [f"{cue} of the {name}" for cue in ("pointed ears", "bushy tail", "dark muzzle", "thin legs",
                                                "striped flank", "pale belly")]


class FakeLLM:
    """State shared with the handler: scripts per class, and what the server saw."""

    def __init__(self):
        self.scripts: dict[str, list[str]] = defaultdict(list)
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.rejected_formats: set[str] = set()  # response_format types answered with a 400
        self.lock = threading.Lock()

    def next_action(self, name: str) -> str:
        with self.lock:
            self.requests[name] += 1
            script = self.scripts[name]
            return script.pop(0) if script else "good"


def make_handler(llm: FakeLLM):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def _completion(self, content: str) -> dict:
            return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake-vlm",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

        def do_POST(self):
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with llm.lock:
                llm.bodies.append(body)
                llm.headers.append({k.lower(): v for k, v in self.headers.items()})
            prompt = body["messages"][0]["content"][0]["text"]
            name = re.search(r'class "([^"]+)"', prompt).group(1)
            kind = body.get("response_format", {}).get("type")
            if kind in llm.rejected_formats:
                with llm.lock:
                    llm.requests[name] += 1
                message = ("response_format is not supported" if kind == "json_object"
                           else f"Unsupported value: 'response_format.type' does not support '{kind}'")
                self._send(400, {"error": {"message": message, "type": "invalid_request_error"}})
                return
            action = llm.next_action(name)
            good = json.dumps({"phrases": phrases_for(name)})
            if action == "good":
                self._send(200, self._completion(good))
            elif action == "fenced":
                self._send(200, self._completion(f"```json\n{good}\n```"))
            elif action == "malformed":
                self._send(200, self._completion('{"phrases": ["pointed ears", '))
            elif action == "too_few":
                self._send(200, self._completion(json.dumps(
                    {"phrases": ["pointed ears", "Pointed ears ", "", name, "bushy tail"]})))
            elif action == "descriptions":  # what local models often answer without JSON mode
                doc = json.dumps({"descriptions": phrases_for(name)}, indent=2)
                self._send(200, self._completion(f"Sure! Here are the cues:\n```json\n{doc}\n```\nHope this helps."))
            elif action == "bare_list":
                self._send(200, self._completion(json.dumps(phrases_for(name))))
            elif action == "bullets":
                self._send(200, self._completion("Visual cues:\n" + "\n".join(f"{i}. {p}" for i, p in
                                                                               enumerate(phrases_for(name), 1))))
            elif action == "429":
                self._send(429, {"error": {"message": "slow down", "type": "rate_limit_exceeded"}},
                           {"retry-after": "0.3"})
            elif action.startswith("429:"):  # 429 with the given Retry-After value
                self._send(429, {"error": {"message": "slow down", "type": "rate_limit_exceeded"}},
                           {"retry-after": action[4:]})
            elif action in ("502", "503"):
                self._send(int(action), {"error": {"message": "upstream unavailable"}})
            elif action == "500":
                self._send(500, {"error": {"message": "server exploded", "type": "server_error"}})
            elif action == "400":
                self._send(400, {"error": {"message": "image too large", "type": "invalid_request_error"}})
            elif action == "sleep":
                time.sleep(SERVER_SLEEP)
                self._send(200, self._completion(good))
            else:
                raise AssertionError(action)

    return Handler


@pytest.fixture
def server():
    llm = FakeLLM()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(llm))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    llm.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield llm
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def fake_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


@pytest.fixture
def images(tmp_path):
    """Two small images per call: a PNG and a JPEG file with distinct content."""
    def make(tag: int) -> list:
        paths = []
        for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
            img = Image.new("RGB", (8, 6), (10 * tag % 256, 40, 200 - tag))
            img.putpixel((1, 1), (255, tag % 256, 0))
            path = tmp_path / f"img_{tag}.{ext}"
            img.save(path, format=fmt)
            paths.append(path)
        return paths
    return make


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 6))


def make_generator(server, tmp_path, sleeps=None, **kwargs):
    defaults = dict(base_url=server.base_url, dataset_hint="toy animals", timeout=CLIENT_TIMEOUT,
                    max_attempts=4, base_delay=0.1, max_delay=0.25, sleep=sleeps if sleeps is not None else Sleeps())
    defaults.update(kwargs)
    model = defaults.pop("model", "fake-vlm")
    cache = defaults.pop("cache_path", tmp_path / "cache.jsonl")
    return DescriptionGenerator(model, cache, **defaults)


def test_good_answer_request_and_cache_entry(server, tmp_path, images):
    paths = images(1)
    events = []
    gen = make_generator(server, tmp_path)
    summary = gen.generate([ClassImages("red_fox", paths)], progress=events.append)

    assert summary.done == ["red_fox"] and summary.cached == [] and summary.failed == {}
    assert summary.entries["red_fox"].phrases == phrases_for("red fox")
    assert server.requests == {"red fox": 1}

    body, headers = server.bodies[0], server.headers[0]
    assert body["model"] == "fake-vlm"
    assert body["response_format"]["type"] == "json_schema"  # the default (auto) asks for the strictest form
    content = body["messages"][0]["content"]
    assert 'class "red fox"' in content[0]["text"] and "toy animals" in content[0]["text"]
    urls = [part["image_url"]["url"] for part in content[1:]]
    assert [u.split(",")[0] for u in urls] == ["data:image/png;base64", "data:image/jpeg;base64"]
    for url, path in zip(urls, paths):
        sent = base64.b64decode(url.split(",", 1)[1])
        assert sent == path.read_bytes()  # JPEG/PNG files travel untouched
        assert Image.open(io.BytesIO(sent)).size == (8, 6)
    assert headers["authorization"] == f"Bearer {FAKE_KEY}"  # the key from the environment reached the server

    (entry,) = load_cache(tmp_path / "cache.jsonl")
    prov = entry.provenance
    assert prov["model"] == "fake-vlm" and prov["prompt_version"] == PROMPT_VERSION and prov["attempts"] == 1
    assert prov["image_ids"] == [str(p) for p in paths]
    assert prov["image_sha256"] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert datetime.fromisoformat(prov["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert [(e.class_name, e.status, e.attempts) for e in events] == [("red_fox", "done", 1)]
    assert FAKE_KEY not in (tmp_path / "cache.jsonl").read_text() and FAKE_KEY not in repr(gen)


def test_malformed_json_then_good_retry(server, tmp_path, images):
    server.scripts["otter"] = ["malformed", "too_few"]
    sleeps = Sleeps()
    summary = make_generator(server, tmp_path, sleeps).generate({"otter": images(2)})
    assert summary.done == ["otter"]
    assert summary.entries["otter"].provenance["attempts"] == 3
    assert server.requests["otter"] == 3
    assert sleeps == [0.1, 0.2]  # base * 2**(attempt-1)


def test_rate_limit_then_success_honours_retry_after(server, tmp_path, images):
    server.scripts["otter"] = ["429"]
    sleeps = Sleeps()
    summary = make_generator(server, tmp_path, sleeps, max_delay=5.0).generate({"otter": images(2)})
    assert summary.done == ["otter"] and server.requests["otter"] == 2
    assert sleeps == [0.3]  # Retry-After (0.3 s) is longer than our first backoff (0.1 s)


def test_timeout_then_success(server, tmp_path, images):
    server.scripts["otter"] = ["sleep"]
    sleeps = Sleeps()
    start = time.monotonic()
    summary = make_generator(server, tmp_path, sleeps).generate({"otter": images(2)})
    assert summary.done == ["otter"] and server.requests["otter"] == 2
    assert summary.entries["otter"].provenance["attempts"] == 2
    assert sleeps == [0.1]
    assert time.monotonic() - start < SERVER_SLEEP + 1.0  # the client did not wait for the slow answer


def test_backoff_is_exponential_and_capped(server, tmp_path, images):
    server.scripts["otter"] = ["500", "500", "500"]
    sleeps = Sleeps()
    summary = make_generator(server, tmp_path, sleeps, max_attempts=4).generate({"otter": images(2)})
    assert summary.done == ["otter"]
    assert sleeps == [0.1, 0.2, 0.25]


def test_interrupted_run_resumes_without_re_requesting(server, tmp_path, images, caplog):
    caplog.set_level(logging.DEBUG)  # everything, the openai and httpx loggers included
    classes = [ClassImages(n, images(i)) for i, n in enumerate(["ant", "bee", "cat", "dog"])]
    server.scripts["cat"] = ["500"] * 3
    with pytest.raises(DescriptionGenerationError) as info:
        make_generator(server, tmp_path, max_attempts=3).generate(classes)
    err = info.value
    assert err.class_name == "cat" and "InternalServerError" in str(err)
    assert err.summary.done == ["ant", "bee"] and "cat" in err.summary.failed
    assert [e.class_name for e in load_cache(tmp_path / "cache.jsonl")] == ["ant", "bee"]
    assert server.requests == {"ant": 1, "bee": 1, "cat": 3}

    events = []
    summary = make_generator(server, tmp_path).generate(classes, progress=events.append)
    assert summary.cached == ["ant", "bee"] and summary.done == ["cat", "dog"] and summary.complete
    assert server.requests == {"ant": 1, "bee": 1, "cat": 4, "dog": 1}  # finished classes not asked again
    assert [e.status for e in events] == ["cached", "cached", "done", "done"]
    assert [e.class_name for e in load_cache(tmp_path / "cache.jsonl")] == ["ant", "bee", "cat", "dog"]

    assert FAKE_KEY not in (tmp_path / "cache.jsonl").read_text(encoding="utf-8")
    assert caplog.records and FAKE_KEY not in caplog.text
    assert FAKE_KEY not in str(err) and FAKE_KEY not in repr(err.summary)


def test_client_error_fails_at_once_and_skip_goes_on(server, tmp_path, images):
    server.scripts["bee"] = ["400"]
    sleeps = Sleeps()
    summary = make_generator(server, tmp_path, sleeps).generate(
        {"ant": images(1), "bee": images(2), "cat": images(3)}, on_failure="skip")
    assert summary.done == ["ant", "cat"]
    assert list(summary.failed) == ["bee"] and "400" in summary.failed["bee"]
    assert server.requests["bee"] == 1 and sleeps == []
    missing = tmp_path / "nope.png"
    summary = make_generator(server, tmp_path).generate({"eel": [missing]}, on_failure="skip")
    assert "nope.png" in summary.failed["eel"] and server.requests["eel"] == 0


def test_cache_key_depends_on_model_and_images_not_their_order(server, tmp_path, images):
    paths = images(1)
    make_generator(server, tmp_path).generate({"otter": paths})
    assert make_generator(server, tmp_path).generate({"otter": paths[::-1]}).cached == ["otter"]
    assert make_generator(server, tmp_path, model="other-vlm").generate({"otter": paths}).done == ["otter"]
    assert server.requests["otter"] == 2
    Image.new("RGB", (8, 6), (1, 2, 3)).save(paths[0])  # same path, new pixels
    assert make_generator(server, tmp_path).generate({"otter": paths}).done == ["otter"]
    params = GenerationParameters(min_phrases=5, max_phrases=8)
    assert make_generator(server, tmp_path, parameters=params).generate({"otter": paths}).done == ["otter"]
    assert server.requests["otter"] == 4


def test_json_mode_off_accepts_fenced_answer_and_pil_images(server, tmp_path):
    pil = Image.new("RGB", (5, 5), (0, 128, 255))
    params = GenerationParameters(response_format="none", image_detail="low")
    summary = make_generator(server, tmp_path, parameters=params).generate([ClassImages("otter", [pil])])
    server.scripts["otter"] = []
    assert summary.done == ["otter"]
    body = server.bodies[0]
    assert "response_format" not in body
    part = body["messages"][0]["content"][1]["image_url"]
    assert part["detail"] == "low" and part["url"].startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(part["url"].split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(pil))
    server.scripts["seal"] = ["fenced"]
    assert make_generator(server, tmp_path, parameters=params).generate([ClassImages("seal", [pil])]).done == ["seal"]


def test_resized_images_are_re_encoded(server, tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 32), (200, 10, 10)).save(path)
    params = GenerationParameters(max_image_side=16, image_format="jpeg")
    make_generator(server, tmp_path, parameters=params).generate({"otter": [path]})
    url = server.bodies[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (16, 8)


def test_truncated_cache_line_is_skipped_and_repaired(server, tmp_path, images, caplog):
    make_generator(server, tmp_path).generate({"ant": images(1)})
    cache = tmp_path / "cache.jsonl"
    with open(cache, "a", encoding="utf-8") as handle:
        handle.write('{"key": "abc", "class_na')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING):
        summary = make_generator(server, tmp_path).generate({"ant": images(1), "bee": images(2)})
    assert summary.cached == ["ant"] and summary.done == ["bee"]
    assert "unreadable cache line" in caplog.text
    assert [e.class_name for e in load_cache(cache)] == ["ant", "bee"]


def test_export_writes_a_valid_contract_file(server, tmp_path, images):
    summary = make_generator(server, tmp_path).generate({"ant": images(1), "bee": images(2)})
    out = tmp_path / "toy.json"
    exported = export_description_file(load_cache(tmp_path / "cache.jsonl"), ["bee", "ant"], "toy", out,
                                       image_selection="2 test images per class")
    loaded = load_description_file(out, dataset="toy")
    assert loaded.names == ["bee", "ant"]
    assert loaded.phrases_for("ant") == phrases_for("ant")
    assert loaded.generator["model"] == "fake-vlm" and loaded.generator["prompt_version"] == PROMPT_VERSION
    assert loaded.generator["parameters"]["min_phrases"] == 5
    assert "fake-vlm" in loaded.produced_by and "2 of its training images" in loaded.produced_by
    assert "2 test images per class" in loaded.produced_by
    assert loaded.provenance["ant"]["image_ids"] == summary.entries["ant"].provenance["image_ids"]
    assert exported.checksum == loaded.checksum
    assert FAKE_KEY not in out.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="cat"):
        export_description_file(summary.entries, ["ant", "bee", "cat"], "toy", tmp_path / "x.json")
    partial = export_description_file(summary.entries, ["ant", "cat"], "toy", tmp_path / "y.json",
                                      allow_missing=True)
    assert partial.names == ["ant"]


def test_missing_openai_or_key_gives_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        DescriptionGenerator("m", tmp_path / "c.jsonl")
    monkeypatch.setenv("MY_VLM_KEY", FAKE_KEY)
    DescriptionGenerator("m", tmp_path / "c.jsonl", api_key_env="MY_VLM_KEY", base_url="http://127.0.0.1:9/v1")
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"spacil\[llm\]"):
        DescriptionGenerator("m", tmp_path / "c.jsonl", api_key_env="MY_VLM_KEY")


def test_parse_answer_cleans_and_validates():
    content = json.dumps({"phrases": ["  long   upright ears. ", "Long upright ears", "", "Red Fox", "a red fox",
                                      "white tip on the tail", "black legs", "rusty orange coat",
                                      "narrow pointed snout", " ".join(["word"] * 13)]})
    assert parse_answer(content, "red_fox", 5, 10, 12) == ["long upright ears", "white tip on the tail",
                                                          "black legs", "rusty orange coat", "narrow pointed snout"]
    with pytest.raises(InvalidAnswer, match="5 usable phrases"):  # same answer, but 6 are required
        parse_answer(content, "red_fox", 6, 10, 12)
    for bad in ('{"phrases": "a, b"}', '{"phrases": [1, 2]}', '{"colours": ["red"], "shapes": ["round"]}',
                '{"phrases": ["pointed ears", ', "", None, "nope", "I cannot see the image."):
        with pytest.raises(InvalidAnswer):
            parse_answer(bad, "red_fox", 1, 10, 12)
    with pytest.raises(InvalidAnswer, match="expected 1-3"):
        parse_answer(json.dumps({"phrases": ["a", "b", "c", "d"]}), "x", 1, 3, 12)


# ----------------------------------------------------------------------------------------------- real-world answers
CUES = ["long upright ears", "white tail tip", "black legs", "rusty orange coat", "narrow pointed snout"]


@pytest.mark.parametrize("content", [
    json.dumps({"descriptions": CUES}),
    json.dumps(CUES),
    "Here is the JSON you asked for: " + json.dumps({"visual_cues": CUES}),
    "```json\n" + json.dumps({"descriptions": CUES}, indent=2) + "\n```\nLet me know if you need more.",
    "```\n" + json.dumps({"cues": CUES}) + "\n```",
    json.dumps({"class": "red fox", "count": 5, "features": CUES, "scores": [1, 2]}),
    json.dumps({"red fox": {"cues": CUES}}),
    json.dumps({"phrases": [{"phrase": c} for c in CUES]}),
    json.dumps([{"text": c, "confidence": 0.9} for c in CUES]),
    json.dumps({"phrases": [f"{i}. {c}" for i, c in enumerate(CUES, 1)]}),
    "Visual cues of the red fox:\n" + "\n".join(f"- {c}" for c in CUES),
    "\n".join(f"{i}) **{c}**" for i, c in enumerate(CUES, 1)),
], ids=["other_key", "bare_list", "after_prose", "json_fence_then_prose", "plain_fence", "one_list_among_keys",
        "nested_single_key", "phrase_objects", "objects_with_extras", "numbered_strings", "bullets", "numbered_lines"])
def test_parse_answer_accepts_what_models_return(content):
    assert parse_answer(content, "red_fox", 5, 10, 12) == CUES


def test_parse_answer_rejects_answers_without_a_usable_list():
    for bad, reason in (("I cannot see the image.", "no phrase list found"),
                        (json.dumps({"colours": ["red"], "shapes": ["round"]}), "no phrase list found"),
                        ('{"phrases": ["pointed ears", ', "no phrase list found"),
                        (json.dumps({"phrases": []}), "no phrase list found")):
        with pytest.raises(InvalidAnswer, match=reason):
            parse_answer(bad, "red_fox", 1, 10, 12)


# ----------------------------------------------------------------------------------------------- real-world servers
def test_real_world_server_describes_every_class_and_rerun_sends_nothing(server, tmp_path, images, caplog):
    server.rejected_formats = {"json_schema", "json_object"}
    server.scripts.update({"ant": ["429:0", "500", "descriptions"], "bee": ["429:1", "502", "bare_list"],
                           "cat": ["503", "bullets"], "dog": ["sleep"]})
    classes = [ClassImages(n, images(i)) for i, n in enumerate(["ant", "bee", "cat", "dog"])]
    sleeps = Sleeps()
    with caplog.at_level(logging.WARNING, logger="spacil.descriptions.generator"):
        summary = make_generator(server, tmp_path, sleeps, max_delay=5.0).generate(classes)
    assert summary.done == ["ant", "bee", "cat", "dog"] and summary.complete
    assert all(summary.entries[n].phrases == phrases_for(n) for n in summary.done)
    # json_schema and json_object were each rejected once, then never sent again
    assert [b.get("response_format", {}).get("type") for b in server.bodies[:3]] == ["json_schema", "json_object",
                                                                                     None]
    assert all("response_format" not in b for b in server.bodies[2:])
    assert caplog.text.count("does not accept response_format") == 2
    assert server.requests == {"ant": 5, "bee": 3, "cat": 2, "dog": 2}
    assert sleeps == [0.1, 0.2, 1.0, 0.2, 0.1, 0.1]  # Retry-After 0 and 1 honoured, 5xx/timeout backoff
    assert [summary.entries[n].provenance["attempts"] for n in summary.done] == [3, 3, 2, 2]
    assert {summary.entries[n].provenance["response_format"] for n in summary.done} == {"none"}

    for mode in ("auto", "json_object"):  # the response format is not part of the cache key
        again = make_generator(server, tmp_path, parameters=GenerationParameters(response_format=mode))
        assert again.generate(classes).cached == ["ant", "bee", "cat", "dog"]
    assert sum(server.requests.values()) == 12, "a rerun must not send a single request"
    exported = export_description_file(load_cache(tmp_path / "cache.jsonl"), ["ant", "bee", "cat", "dog"], "toy",
                                       tmp_path / "toy.json")
    assert exported.provenance["ant"]["response_format"] == "none"


def test_json_schema_carries_library_limits_and_auto_steps_down_once(server, tmp_path, images, caplog):
    summary = make_generator(server, tmp_path).generate({"ant": images(1)})
    (body,) = server.bodies
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["phrases"] and schema["additionalProperties"] is False
    assert schema["properties"]["phrases"] == {"type": "array", "items": {"type": "string"},
                                               "minItems": MIN_PHRASES, "maxItems": MAX_PHRASES}
    assert summary.entries["ant"].provenance["response_format"] == "json_schema"

    server.rejected_formats = {"json_schema"}
    with caplog.at_level(logging.WARNING, logger="spacil.descriptions.generator"):
        summary = make_generator(server, tmp_path).generate({"bee": images(2), "cat": images(3)})
    assert summary.done == ["bee", "cat"] and server.requests == {"ant": 1, "bee": 2, "cat": 1}
    assert [b["response_format"]["type"] for b in server.bodies[1:]] == ["json_schema", "json_object", "json_object"]
    assert caplog.text.count("does not accept response_format json_schema") == 1
    prov = summary.entries["cat"].provenance
    assert prov["attempts"] == 1 and prov["response_format"] == "json_object"


def test_explicit_response_format_is_kept_and_rejection_explained(server, tmp_path, images):
    server.rejected_formats = {"json_object"}
    sleeps = Sleeps()
    params = GenerationParameters(response_format="json_object")
    summary = make_generator(server, tmp_path, sleeps, parameters=params).generate({"ant": images(1)},
                                                                                   on_failure="skip")
    assert "400" in summary.failed["ant"] and "use 'auto' or 'none'" in summary.failed["ant"]
    assert server.requests["ant"] == 1 and sleeps == []
    summary = make_generator(server, tmp_path, parameters=GenerationParameters(response_format="none")).generate(
        {"ant": images(1)})
    assert summary.done == ["ant"] and "response_format" not in server.bodies[-1]
    with pytest.raises(ValueError, match="response_format must be one of"):
        GenerationParameters(response_format="xml")


def test_retry_after_http_date_is_honoured_and_capped(server, tmp_path, images):
    now = datetime.now(timezone.utc)
    http_date = lambda seconds: format_datetime(now + timedelta(seconds=seconds), usegmt=True)  # noqa: E731
    server.scripts["ant"] = [f"429:{http_date(4)}", f"429:{http_date(3600)}", f"429:{http_date(-60)}",
                             "429:not a date"]
    sleeps = Sleeps()
    summary = make_generator(server, tmp_path, sleeps, max_attempts=5, max_delay=10.0).generate({"ant": images(1)})
    assert summary.done == ["ant"] and server.requests["ant"] == 5
    assert 2.0 < sleeps[0] <= 4.0  # the date, in seconds from now
    assert sleeps[1:] == [10.0, 0.4, 0.8]  # capped at max_delay; past or unreadable dates: our own backoff
