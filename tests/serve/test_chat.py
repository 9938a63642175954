"""POST /v1/chat/completions and the vLLM-named gauges on /metrics: the official `openai` client
(plain and streamed), the chat template rendered exactly as documented (the same text as
/v1/completions on the rendered prompt), role-marker stops, 400s in OpenAI's shape, n > 1, usage,
--chat-template and its errors, vllm:num_requests_running / _waiting / kv_cache_usage_perc while
requests are held, and config mode (user_config.chat_template, routing by model through the proxy).

Run: CSERVE_BIN=build/cserve build/venv-test/bin/python -m pytest -q tests/serve/test_chat.py
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_api import BIN, DISTIL, ROOT, T, TINY, Server, check_v1_error, sse_events, stop_clean  # noqa: E402
from test_api import pytestmark  # noqa: E402,F401
from test_control import ControlServer, app_cfg, config, write_yaml  # noqa: E402
from test_control import stop_clean as stop_clean_ctl  # noqa: E402

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": [{"type": "text", "text": "How are"}, {"type": "text", "text": "you?"}]},
]
# CONV through the default template, as README "Chat completions" documents it
CONV_TEXT = ("System: Be brief.\nUser: Hello there\nAssistant: Hi!\nSystem: Answer in English.\n"
             "User: How are\nyou?\nAssistant:")
ROLE_STOPS = ["\nUser:", "\nSystem:"]


@pytest.fixture(scope="module")
def srv():
    s = Server()
    yield s
    stop_clean(s)


def client(s, prefix=""):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=s.url(prefix + "/v1"), api_key="none", max_retries=0)


def chat(s, body, path="/v1/chat/completions"):
    return requests.post(s.url(path), json=body, timeout=T)


def completion(s, prompt, path="/v1/completions", **kw):
    r = requests.post(s.url(path), json=dict(prompt=prompt, **kw), timeout=T)
    assert r.status_code == 200, r.text
    return r.json()


def metrics(s):
    """{name{labels}: value} of the /metrics text."""
    out = {}
    for line in requests.get(s.url("/metrics"), timeout=T).text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


# ---------------------------------------------------------------- the official client

def test_openai_client(srv):
    c = client(srv)
    r = c.chat.completions.create(model="tiny", messages=CONV, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    assert len(r.choices) == 1
    ch = r.choices[0]
    assert ch.index == 0 and ch.message.role == "assistant" and isinstance(ch.message.content, str)
    assert ch.finish_reason in ("stop", "length")
    # the same generation as a completion of the rendered prompt: the template is what README says
    ref = completion(srv, CONV_TEXT, max_tokens=6, temperature=0, stop=ROLE_STOPS)
    assert ch.message.content == ref["choices"][0]["text"]
    assert ch.finish_reason == ref["choices"][0]["finish_reason"]
    assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == ref["usage"]["completion_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # max_completion_tokens is OpenAI's newer name, and wins
    r2 = c.chat.completions.create(model="tiny", messages=CONV, max_tokens=6, max_completion_tokens=3, temperature=0)
    assert r2.usage.completion_tokens <= 3 and ref["choices"][0]["text"].startswith(r2.choices[0].message.content)


def test_openai_client_stream(srv):
    c = client(srv)
    body = dict(model="tiny", messages=CONV, max_tokens=8, temperature=0.9, seed=7)
    plain = c.chat.completions.create(**body)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **body))
    assert all(k.object == "chat.completion.chunk" and k.id == chunks[0].id for k in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    text = "".join(k.choices[0].delta.content or "" for k in chunks if k.choices)
    assert text == plain.choices[0].message.content  # same seed, same text, streamed or not
    ends = [k.choices[0].finish_reason for k in chunks if k.choices and k.choices[0].finish_reason]
    assert ends == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    # on the wire: role delta, content deltas, an empty delta with the finish, [DONE]
    r = requests.post(srv.url("/v1/chat/completions"), json=dict(stream=True, **body), stream=True, timeout=T)
    ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    first, last = json.loads(ev[0]), json.loads(ev[-2])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in last


def test_sampling_matches_completions(srv):
    """Seeded sampling with n > 1: the same choices as /v1/completions on the rendered prompt."""
    msgs = [{"role": "user", "content": "Tell me a story"}]
    body = dict(messages=msgs, max_tokens=5, temperature=1.0, top_p=0.9, seed=1234, n=3)
    r = chat(srv, body)
    assert r.status_code == 200, r.text
    got = r.json()
    ref = completion(srv, "User: Tell me a story\nAssistant:", max_tokens=5, temperature=1.0, top_p=0.9, seed=1234,
                     n=3, stop=ROLE_STOPS)
    assert [c["index"] for c in got["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in got["choices"]] == [c["text"] for c in ref["choices"]]
    assert got["usage"] == ref["usage"]
    lengths = [c for c in got["choices"] if c["finish_reason"] == "length"]
    if len(lengths) == 3:  # none stopped early: every choice used all its tokens
        assert got["usage"]["completion_tokens"] == 15


# ---------------------------------------------------------------- errors

BAD = [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": None}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages"),  # crashed the server
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 100000}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 100}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": "x " * 200}]}, "messages"),  # no room left in 128 positions
]


@pytest.mark.parametrize("body,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_are_400(srv, body, param):
    e = check_v1_error(chat(srv, body), 400)
    assert e["type"] == "invalid_request_error" and e["param"] == param and e["code"], e


def test_openai_client_bad_request(srv):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as ei:
        client(srv).chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x",
                                                                     "tool_call_id": "1"}])
    assert "role" in str(ei.value)
    with pytest.raises(openai.NotFoundError):
        client(srv).chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])


def test_accepted_neutral_fields(srv):
    """Fields that ask for nothing we lack are accepted: the client's defaults, user, name."""
    body = {"messages": [{"role": "user", "content": "x", "name": "ann"}], "max_tokens": 2, "logprobs": False,
            "top_logprobs": 0, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
            "user": "u1", "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "stop": None}
    r = chat(srv, body)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- the template

def greedy(s, prompt, n):
    return completion(s, prompt, max_tokens=n, temperature=0)["choices"][0]["text"]


def test_custom_template_and_role_stop(tmp_path):
    """--chat-template (a file): the prompt is rendered with it, and the reply ends at a role
    marker derived from it (no newline before it: the assistant's text does not end with one)."""
    probe = Server()
    try:
        text = greedy(probe, "<<Once upon a time>>", 12)
    finally:
        stop_clean(probe)
    words = text.split()
    assert len(words) >= 3, text
    marker = words[1]  # a word the model writes after the system text below
    tpl = {"prefix": "<<", "system": "{content}>>", "user": " " + marker + " {content}", "assistant": "{content}",
           "generation": ""}
    f = tmp_path / "chat.json"
    f.write_text(json.dumps(tpl))
    s = Server("--chat-template", str(f))
    try:
        r = chat(s, {"messages": [{"role": "system", "content": "Once upon a time"}], "max_tokens": 12,
                     "temperature": 0})
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        assert ch["message"]["content"] == text[:text.index(marker)]
        assert ch["finish_reason"] == "stop"
        # the request's own stop comes on top of the template's
        r = chat(s, {"messages": [{"role": "system", "content": "Once upon a time"}], "max_tokens": 12,
                     "temperature": 0, "stop": words[0]})
        assert r.json()["choices"][0]["message"]["content"] == text[:text.index(words[0])]
    finally:
        stop_clean(s)
    # the same template as JSON text; "stop": [] turns the role markers off
    s = Server("--chat-template", json.dumps(dict(tpl, stop=[])))
    try:
        r = chat(s, {"messages": [{"role": "system", "content": "Once upon a time"}], "max_tokens": 12,
                     "temperature": 0})
        assert r.json()["choices"][0]["message"]["content"] == text
    finally:
        stop_clean(s)


@pytest.mark.parametrize("tpl,words", [
    ('{"user": "no placeholder"}', ["user", "{content}"]),
    ('{"generation": "{content}"}', ["generation", "{content}"]),
    ('{"usr": "{content}"}', ["usr", "unknown key"]),
    ('{"stop": [1]}', ["stop"]),
    ('{"user": ', ["not JSON"]),
    ("/nonexistent/chat.json", ["/nonexistent/chat.json"]),
])
def test_bad_template_is_a_startup_error(tpl, words):
    r = subprocess.run([BIN, "serve", "--model", TINY, "--host", "127.0.0.1", "--port", "0", "--threads", "1",
                        "--chat-template", tpl], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0, r.stderr[-3000:]
    assert "ready" not in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr[-3000:])


# ---------------------------------------------------------------- gauges

def hold(s, body):
    """Sends a POST /v1/chat/completions on a raw socket and leaves it open (closing it cancels)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=T)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def wait_metrics(s, pred, timeout=120):
    """The /metrics values once pred holds (or the last seen ones after timeout): a wait, not a timing assert."""
    deadline, m = time.time() + timeout, {}
    while time.time() < deadline:
        m = metrics(s)
        if pred(m):
            break
        time.sleep(0.05)
    return m


def test_vllm_gauges_while_requests_are_held():
    """One batch slot and three streamed requests: one running, two waiting, the KV cache holding
    the running one's tokens; all back to 0 once the clients leave."""
    if not os.path.isdir(DISTIL):
        pytest.fail("needs build/models/distil (make models)")
    s = Server("--max-ongoing-requests", "1", model=DISTIL)
    socks = []
    try:
        model = requests.get(s.url("/v1/models"), timeout=T).json()["data"][0]
        ctx, lab = model["max_model_len"], '{model_name="%s"}' % model["id"]
        run, wait, kv = ("vllm:" + k + lab for k in ("num_requests_running", "num_requests_waiting",
                                                     "kv_cache_usage_perc"))
        m = metrics(s)
        assert m[run] == 0 and m[wait] == 0 and m[kv] == 0, m
        msgs = [{"role": "user", "content": "Hold on"}]
        prompt = chat(s, {"messages": msgs, "max_tokens": 1})
        assert prompt.status_code == 200, prompt.text
        n_prompt = prompt.json()["usage"]["prompt_tokens"]
        body = {"messages": msgs, "max_tokens": 500, "stream": True, "ignore_eos": True, "temperature": 0}
        socks = [hold(s, body) for _ in range(3)]
        m = wait_metrics(s, lambda m: m[run] == 1 and m[wait] == 2 and m[kv] > 0)
        assert m[run] == 1 and m[wait] == 2, m
        assert m["cserve_scheduler_running"] == 1, m  # ours agree
        held = m[kv] * ctx  # tokens held over 1 slot x the context
        assert n_prompt <= held <= ctx and abs(held - round(held)) < 1e-3, (m[kv], n_prompt, ctx)
        for k in socks:
            k.close()
        m = wait_metrics(s, lambda m: m[run] == 0 and m[wait] == 0 and m[kv] == 0)
        assert m[run] == 0 and m[wait] == 0 and m[kv] == 0, m
    finally:
        for k in socks:
            k.close()
        stop_clean(s)


# ---------------------------------------------------------------- config mode

CFG_TPL = {"system": "# {content}\n", "user": "Q: {content}\n", "assistant": "A: {content}\n", "generation": "A:"}


def test_config_mode_routes_chat(tmp_path):
    """Behind `cserve serve --config`: /v1/chat/completions at the root goes to the application
    the model names (streaming included), the deployment's user_config.chat_template renders it,
    and the proxy's /metrics has the vLLM gauges by model."""
    cfg = config(app_cfg("chatty", "/chatty", TINY, user_config={"chat_template": CFG_TPL}),
                 app_cfg("other", "/other", TINY))
    s = ControlServer(cfg)
    try:
        s.wait_app("chatty", 1)
        s.wait_app("other", 1)
        msgs = [{"role": "system", "content": "Short"}, {"role": "user", "content": "Why?"}]
        c = client(s)
        r = c.chat.completions.create(model="chatty", messages=msgs, max_tokens=6, temperature=0)
        ref = completion(s, "# Short\nQ: Why?\nA:", path="/chatty/v1/completions", max_tokens=6, temperature=0,
                         stop=["\nQ:", "\n#"])
        assert r.choices[0].message.content == ref["choices"][0]["text"]
        assert r.usage.prompt_tokens == ref["usage"]["prompt_tokens"]
        # the other application keeps the default template
        r2 = client(s, "/other").chat.completions.create(model="other", messages=msgs, max_tokens=6, temperature=0)
        ref2 = completion(s, "System: Short\nUser: Why?\nAssistant:", path="/other/v1/completions", max_tokens=6,
                          temperature=0, stop=ROLE_STOPS)
        assert r2.choices[0].message.content == ref2["choices"][0]["text"]
        chunks = list(c.chat.completions.create(model="chatty", messages=msgs, max_tokens=6, temperature=0,
                                                stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(k.choices[0].delta.content or "" for k in chunks) == r.choices[0].message.content
        text = requests.get(s.url("/metrics"), timeout=T).text
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            series = re.findall(r'^%s\{model_name="([^"]+)"\} \d+$' % name, text, re.M)
            # both applications serve build/models/tiny: one series for the model, not two of the same labels
            assert series and len(series) == len(set(series)), text[-3000:]
        # the KV figure too (the endpoint picker scrapes the pod's port, which is the proxy's)
        kv = re.findall(r'^vllm:kv_cache_usage_perc\{model_name="([^"]+)"\} (\S+)$', text, re.M)
        assert kv and len(kv) == len({m for m, _ in kv}) and all(0 <= float(v) <= 1 for _, v in kv), text[-3000:]
        assert 'route="/v1/chat/completions"' in text
    finally:
        stop_clean_ctl(s)


def test_config_bad_chat_template_refused(tmp_path):
    cfg = config(app_cfg("tiny", "/", TINY, user_config={"chat_template": {"user": "Q:"}}))
    path = write_yaml(tmp_path / "serve.yaml", cfg)
    r = subprocess.run([BIN, "serve", "--config", path, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "chat_template" in r.stderr and "{content}" in r.stderr, r.stderr[-3000:]
