"""Drives a running `gemma serve` with the official `openai` client and with raw HTTP.

Called by tests/serve_cli.rs, which starts the server on a free port and stops it:

    serve_openai.py CHECK --base http://127.0.0.1:PORT --gemma BIN --model FILE [--pid PID] [--key KEY]

CHECK is one of api, tools, errors, busy, batching, load, disconnect. Each asserts what it
checks and exits non-zero with a message on the first failure. Expected texts come from
`gemma run` (the same model and flags, one request at a time), from the server itself
served one request at a time, or from OpenAI's documented shapes; nothing is hard-coded.
"""

import argparse
import base64
import concurrent.futures as futures
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.parse

import openai


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(cond, message):
    if not cond:
        fail(message)


class Raw:
    """Plain HTTP requests, for what the client library hides (status codes, error bodies)."""

    def __init__(self, base, key=None):
        u = urllib.parse.urlparse(base)
        self.host, self.port, self.key = u.hostname, u.port, key

    def request(self, method, path, body=None, headers=None, key=True):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        h = {"Content-Type": "application/json"}
        if key and self.key:
            h["Authorization"] = f"Bearer {self.key}"
        h.update(headers or {})
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, payload

    def json(self, method, path, body=None, **kw):
        status, headers, payload = self.request(method, path, body, **kw)
        try:
            return status, headers, json.loads(payload)
        except json.JSONDecodeError:
            fail(f"{method} {path} -> {status}: not JSON: {payload[:200]!r}")


def gemma_run(args, *flags):
    """`gemma run` on the same model, its --json object."""
    cmd = [args.gemma, "run", "-m", args.model, "-q", "--json", "-t", "2", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def client(args):
    return openai.OpenAI(base_url=args.base + "/v1", api_key=args.key or "none", max_retries=0, timeout=300)


def check_api(args):
    c = client(args)
    models = c.models.list().data
    check(len(models) == 1 and models[0].id, f"one model listed: {models}")
    name = models[0].id

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three colors."}]
    r = c.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=24)
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and r.model == name, f"response shape: {r}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
    check(r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
          f"usage {r.usage}")

    # Streaming: the chunks concatenate to the same text, and the usage comes last.
    chunks = list(c.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(streamed == text, f"streamed {streamed!r} != non-streamed {text!r}")
    check(chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    check(finishes == [r.choices[0].finish_reason], f"one finish_reason, {finishes}")
    check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens,
          f"usage chunk last: {chunks[-1]}")
    # The second identical request found all but its last two prompt tokens in a slot's cache
    # (the last runs beside the one before it, as in a fresh prompt).
    check(chunks[-1].usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens - 2,
          f"cached tokens {chunks[-1].usage}")

    # The same conversation through `gemma run --chat` gives the same tokens.
    ran = gemma_run(args, "--chat", "--system", "Answer briefly.", "-p", "Name three colors.", "--temp", "0", "-n", "24")
    check(ran["text"] == text, f"gemma run --chat: {ran['text']!r} != served {text!r}")
    check(len(ran["prompt_ids"]) == r.usage.prompt_tokens, "the same rendered prompt")

    # Text completions from token ids and from text agree, and with `gemma run --ids`.
    ids = ran["prompt_ids"][:6]
    by_ids = c.completions.create(model=name, prompt=ids, temperature=0, max_tokens=12)
    ran_ids = gemma_run(args, "--ids", " ".join(map(str, ids)), "--temp", "0", "-n", "12")
    check(by_ids.choices[0].text == ran_ids["text"], f"completion {by_ids.choices[0].text!r} != {ran_ids['text']!r}")
    check(by_ids.usage.prompt_tokens == 6, f"{by_ids.usage}")
    parts = list(c.completions.create(model=name, prompt=ids, temperature=0, max_tokens=12, stream=True))
    check("".join(p.choices[0].text for p in parts if p.choices) == by_ids.choices[0].text, "streamed completion")

    # llama-server's ignore_eos: exactly max_tokens, whatever the model would end with.
    long = c.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=40,
                                     extra_body={"ignore_eos": True})
    check(long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length", f"ignore_eos: {long.usage}")

    raw = Raw(args.base, args.key)
    status, _, health = raw.json("GET", "/health")
    check(status == 200 and health == {"status": "ok"}, f"health {status} {health}")
    status, _, tok = raw.json("POST", "/tokenize", {"content": "Name three colors.", "add_special": True})
    expected = subprocess.run([args.gemma, "tokenize", "-m", args.model, "Name three colors."], capture_output=True,
                              text=True, check=True).stdout.split()
    check(status == 200 and tok["tokens"] == [int(t) for t in expected], f"tokenize {tok} vs {expected}")
    status, _, detok = raw.json("POST", "/detokenize", {"tokens": tok["tokens"][1:]})
    check(status == 200 and detok["content"] == "Name three colors.", f"detokenize {detok}")
    status, headers, metrics = raw.request("GET", "/metrics")
    body = metrics.decode()
    check(status == 200 and "gemma_tokens_predicted_total" in body and "# TYPE gemma_requests_queued gauge" in body,
          f"metrics {body[:300]}")
    print("api ok")


def check_tools(args):
    """A tool round trip on Gemma 4's template: the assistant's tool_calls and the tool's answer
    go in as OpenAI writes them, and the server runs the same prompt as `gemma run --jsonl` with
    the template's own form (tool_responses on the calling message)."""
    c = client(args)
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}},
                       "required": ["city"]}}}]
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_7", "content": json.dumps({"temp_c": 21, "sky": "clear"})},
    ]
    r = c.chat.completions.create(model="m", messages=messages, tools=tools, temperature=0, max_tokens=8)
    native = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
         "tool_responses": [{"name": "get_weather", "response": {"temp_c": 21, "sky": "clear"}}]},
    ]
    line = json.dumps({"messages": native, "tools": tools, "n_predict": 8, "temperature": 0})
    cmd = [args.gemma, "run", "-m", args.model, "-q", "--jsonl", "-t", "2"]
    ran = json.loads(subprocess.run(cmd, input=line + "\n", capture_output=True, text=True, check=True).stdout)
    check(r.usage.prompt_tokens == ran["prompt_tokens"], f"prompt {r.usage.prompt_tokens} vs jsonl {ran['prompt_tokens']}")
    check(r.usage.completion_tokens == ran["completion_tokens"], f"{r.usage} vs jsonl {ran}")
    markers = ("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>")
    if not any(m in ran["text"] for m in markers):
        check(r.choices[0].message.content == ran["text"], f"{r.choices[0].message.content!r} vs {ran['text']!r}")
    # The prompt ends inside the model's turn, right after the tool's answer (no new turn).
    status, _, tok = Raw(args.base, args.key).json("POST", "/tokenize", {"content": "<tool_response|>", "with_pieces": True})
    check(status == 200 and len(tok["tokens"]) == 1, f"<tool_response|> is one special token: {tok}")
    print("tools ok")


def expect_error(raw, method, path, body, status, headers=None, key=True, contains=None):
    got, h, payload = raw.json(method, path, body, headers=headers, key=key)
    check(got == status, f"{method} {path}: status {got}, expected {status}: {payload}")
    e = payload.get("error") if isinstance(payload, dict) else None
    check(isinstance(e, dict) and isinstance(e.get("message"), str) and e.get("code") == status and e.get("type"),
          f"{method} {path}: OpenAI error shape: {payload}")
    if contains:
        check(contains in e["message"], f"{method} {path}: {e['message']!r} lacks {contains!r}")
    return h


def check_errors(args):
    raw = Raw(args.base, args.key)
    chat = "/v1/chat/completions"
    ok = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    expect_error(raw, "POST", chat, b"{not json", 400, contains="invalid request body")
    expect_error(raw, "POST", chat, {**ok, "temperature": "hot"}, 400, contains="temperature")
    expect_error(raw, "POST", chat, {**ok, "messages": "Hi"}, 400)
    expect_error(raw, "POST", chat, {"max_tokens": 2}, 400, contains="messages")
    expect_error(raw, "POST", chat, {**ok, "n": 2}, 400, contains="n:")
    expect_error(raw, "POST", chat, {**ok, "logprobs": True}, 400, contains="logprobs")
    expect_error(raw, "POST", chat, {**ok, "temperature": -1}, 400, contains="temperature")
    expect_error(raw, "POST", chat, {**ok, "messages": [{"role": "robot", "content": "x"}]}, 400, contains="role")
    expect_error(raw, "POST", "/v1/completions", {"prompt": [1, 99999999], "max_tokens": 2}, 400, contains="out of range")
    expect_error(raw, "POST", "/v1/completions", {"prompt": "word " * 400, "max_tokens": 2}, 400, contains="context")
    expect_error(raw, "POST", chat, {**ok, "messages": [{"role": "user", "content": "word " * 400}]}, 400,
                 contains="context")
    # No mmproj beside this model: images are a 400 that says what to do.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    expect_error(raw, "POST", chat, {**ok, "messages": [{"role": "user", "content": [image]}]}, 400,
                 contains="--mmproj")
    expect_error(raw, "GET", "/v1/nothing", None, 404)
    expect_error(raw, "GET", chat, None, 405)
    expect_error(raw, "POST", chat, b"{" + b" " * (2 << 20) + b"}", 413)
    # The key: missing, wrong; /health needs none.
    expect_error(raw, "POST", chat, ok, 401, key=False)
    expect_error(raw, "POST", chat, ok, 401, key=False, headers={"Authorization": "Bearer wrong"})
    expect_error(raw, "GET", "/v1/models", None, 401, key=False)
    status, _, _ = raw.json("GET", "/health", key=False)
    check(status == 200, "health without the key")
    # And it still serves.
    status, _, r = raw.json("POST", chat, ok)
    check(status == 200 and r["choices"][0]["message"]["content"] is not None, f"served after errors: {r}")
    print("errors ok")


def check_busy(args):
    """One slot, a queue of one: a third request at once is turned away with 503 and
    Retry-After, and the other two are served."""
    raw = Raw(args.base, args.key)
    # Long enough (several seconds) that the first is still running when the third comes.
    body = {"prompt": "Once upon a time", "max_tokens": 300, "temperature": 0, "ignore_eos": True}
    with futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(raw.json, "POST", "/v1/completions", body)
        time.sleep(0.3)
        second = pool.submit(raw.json, "POST", "/v1/completions", body)
        time.sleep(0.3)
        h = expect_error(raw, "POST", "/v1/completions", body, 503)
        check(h.get("retry-after") == "1", f"Retry-After: {h}")
        a, b = first.result(), second.result()
    check(a[0] == 200 and b[0] == 200 and a[2]["choices"][0]["text"] == b[2]["choices"][0]["text"], f"{a} {b}")
    print("busy ok")


PROMPTS = [
    "The history of the printing press",
    "Write a short poem about the sea.",
    "List the planets of the solar system in order from the sun, and say one thing about each.",
    "Hi",
    "Translate to French: the cat sleeps on the warm windowsill while the rain falls outside.",
    "What is 12 times 7?",
    "Explain photosynthesis in one paragraph for a ten year old who likes football and dinosaurs.",
    "Why is the sky blue?",
]


def chat_body(i):
    return {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "temperature": 0,
            "max_tokens": 6 + 5 * (i % 5)}


def check_batching(args):
    """Prints the texts of the 8 prompts, all sent at once (interleaved, mixed lengths); the Rust
    test compares them across servers with --parallel 4 and --parallel 1 (one at a time)."""
    c = client(args)
    n = len(PROMPTS)
    one_at_a_time = args.sequential
    def ask(i):
        r = c.chat.completions.create(model="m", **chat_body(i))
        return r.choices[0].message.content
    if one_at_a_time:
        texts = [ask(i) for i in range(n)]
    else:
        with futures.ThreadPoolExecutor(n) as pool:
            texts = list(pool.map(ask, range(n)))
    print(json.dumps(texts))


def data_url(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def image_message(path, text):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(path)}},
                                        {"type": "text", "text": text}]}


def check_images(args):
    """Images in chat messages (the tiny vision model, --image-tokens 70): the prompt is the HF
    processor's chat prompt (the fixture's `chat` case: its token count) and the reply `gemma run
    --chat --image`'s; two image requests at once each get their own reply; a repeated request
    reuses the cached image, and another image at the same place does not; bad images are 400s
    naming the problem."""
    images = os.path.join(os.path.dirname(args.model), "vision-images")
    fixture = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "tiny-gemma4-vision.json")))
    case = next(c for c in fixture["cases"] if c["name"] == "chat")
    c = client(args)
    def ask(file, text=case["user"]):
        r = c.chat.completions.create(model="m", messages=[image_message(os.path.join(images, file), text)],
                                      temperature=0, max_tokens=6)
        return r.choices[0].message.content, r.usage
    def alone(file, text=case["user"]):
        cmd = [args.gemma, "run", "-m", args.model, "-q", "--json", "-t", "2", "--chat", "--mmproj", args.mmproj,
               "--image", os.path.join(images, file), "--image-tokens", "70", "-n", "6", "--temp", "0", "-p", text]
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        return out["text"], len(out["prompt_ids"])
    text, usage = ask("square.png")
    want, n_prompt = alone("square.png")
    check(usage.prompt_tokens == len(case["input_ids"]) == n_prompt,
          f"prompt tokens {usage.prompt_tokens}, HF's {len(case['input_ids'])}, gemma run's {n_prompt}")
    check(text == want, f"{text!r} vs gemma run --chat --image {want!r}")
    # Again: the whole prompt but its last token comes from the slot's cache.
    text2, usage2 = ask("square.png")
    cached = usage2.prompt_tokens_details.cached_tokens
    check(text2 == text and cached >= usage2.prompt_tokens - 2, f"repeat: {text2!r}, cached {cached} of {usage2.prompt_tokens}")
    # Another image at the same place: nothing of the first image is reused.
    boi = case["input_ids"].index(fixture["boi_token_id"])
    other, usage3 = ask("one.png")
    cached = usage3.prompt_tokens_details.cached_tokens
    check(cached <= boi + 1, f"another image reused {cached} tokens (the image starts after {boi + 1})")
    check(other == alone("one.png")[0], f"one.png: {other!r}")
    # Two at once (two slots): each its own reply.
    with futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda f: ask(f, "Describe it.")[0], ["square.png", "one.png"])
    check((a, b) == (alone("square.png", "Describe it.")[0], alone("one.png", "Describe it.")[0]),
          f"at once: {a!r}, {b!r}")
    raw = Raw(args.base, args.key)
    chat = "/v1/chat/completions"
    def body(url):
        return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
                "max_tokens": 2}
    expect_error(raw, "POST", chat, body("https://example.com/cat.png"), 400, contains="only data: URLs")
    expect_error(raw, "POST", chat, body("file:///etc/passwd"), 400, contains="only data: URLs")
    expect_error(raw, "POST", chat, body("data:image/png;base64,@@@"), 400, contains="base64")
    truncated = data_url(os.path.join(images, "square.png"))[:200]
    expect_error(raw, "POST", chat, body(truncated), 400, contains="image")
    not_image = "data:image/png;base64," + base64.b64encode(b"just some text").decode()
    expect_error(raw, "POST", chat, body(not_image), 400, contains="image")
    expect_error(raw, "POST", chat, {"messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": data_url(os.path.join(images, "one.png"))}}]}], "max_tokens": 2},
        400, contains="user messages")
    # And it still serves.
    check(ask("square.png")[0] == text, "served after errors")
    print("images ok")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    fail("no VmRSS")


def check_load(args):
    """200 requests from 16 concurrent clients, mixed prompt and output lengths, a quarter
    streaming, some disconnecting early. Every request is answered (or turned away with 503),
    none lost or mixed up: at temperature 0 every answer to a prompt is the same, and a shorter
    one a prefix of a longer one. RSS stays within 5% after warm-up."""
    raw = Raw(args.base, args.key)
    rng = random.Random(7)
    plan = [(rng.randrange(len(PROMPTS)), rng.choice([4, 8, 16, 24]), i % 4 == 0, i % 13 == 5) for i in range(200)]
    results = {}
    lock = threading.Lock()
    rss = {}

    def one(i):
        p, max_tokens, stream, disconnect = plan[i]
        body = {"messages": [{"role": "user", "content": PROMPTS[p]}], "temperature": 0, "max_tokens": max_tokens,
                "stream": stream}
        if stream:
            conn = http.client.HTTPConnection(raw.host, raw.port, timeout=300)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status != 200:
                payload = json.loads(r.read())
                conn.close()
                check(r.status == 503 and payload["error"]["code"] == 503, f"request {i}: {r.status} {payload}")
                return i, ("rejected", None)
            text, done = "", False
            for line in r:
                line = line.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                text += chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
                if disconnect and len(text) > 0:
                    conn.close()
                    return i, ("disconnected", None)
            conn.close()
            check(done, f"request {i}: stream ended without [DONE]")
            return i, ("ok", text)
        status, _, payload = raw.json("POST", "/v1/chat/completions", body)
        if status == 503:
            return i, ("rejected", None)
        check(status == 200, f"request {i}: {status} {payload}")
        return i, ("ok", payload["choices"][0]["message"]["content"])

    with futures.ThreadPoolExecutor(16) as pool:
        done = 0
        for i, result in pool.map(one, range(200)):
            with lock:
                results[i] = result
                done += 1
                if done == 50:
                    rss["warm"] = rss_kib(args.pid)
    rss["end"] = rss_kib(args.pid)
    check(len(results) == 200, "every request answered")
    answered = [(plan[i], r[1]) for i, r in results.items() if r[0] == "ok"]
    by_prompt = {}
    for (p, max_tokens, _, _), text in answered:
        by_prompt.setdefault(p, {}).setdefault(max_tokens, set()).add(text)
    for p, by_len in by_prompt.items():
        for max_tokens, texts in by_len.items():
            check(len(texts) == 1, f"prompt {p}, {max_tokens} tokens: different answers {texts}")
        ordered = [next(iter(by_len[m])) for m in sorted(by_len)]
        for short, long in zip(ordered, ordered[1:]):
            check(long.startswith(short), f"prompt {p}: {short!r} is not the start of {long!r}")
    growth = (rss["end"] - rss["warm"]) / rss["warm"]
    counts = {k: sum(1 for r in results.values() if r[0] == k) for k in ("ok", "rejected", "disconnected")}
    print(json.dumps({"counts": counts, "rss_kib": rss, "growth": growth}))
    check(abs(growth) <= 0.05, f"RSS grew {growth:.1%} after warm-up: {rss}")
    check(counts["ok"] >= 150, f"most requests served: {counts}")
    print("load ok")


def check_disconnect(args):
    """A streamed request whose client goes away after the first chunks frees its slot within a
    step: the server is idle again long before the 2000 tokens it asked for."""
    raw = Raw(args.base, args.key)
    conn = http.client.HTTPConnection(raw.host, raw.port, timeout=60)
    body = {"prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    check(r.status == 200, f"stream status {r.status}")
    seen = 0
    for line in r:
        if line.startswith(b"data: "):
            seen += 1
            if seen == 3:
                break
    conn.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        _, _, metrics = raw.request("GET", "/metrics")
        values = dict(l.split(" ", 1) for l in metrics.decode().splitlines() if l and not l.startswith("#"))
        if float(values["gemma_slots_busy"]) == 0:
            predicted = float(values["gemma_tokens_predicted_total"])
            check(predicted < 2000, f"generation went on: {predicted} tokens")
            print(f"disconnect ok ({predicted:.0f} tokens generated)")
            return
        time.sleep(0.1)
    fail("the slot stayed busy after the client left")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("check")
    parser.add_argument("--base", required=True)
    parser.add_argument("--gemma", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--key")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--mmproj")
    args = parser.parse_args()
    checks = {"api": check_api, "tools": check_tools, "errors": check_errors, "busy": check_busy,
              "batching": check_batching, "load": check_load, "disconnect": check_disconnect,
              "images": check_images}
    checks[args.check](args)


if __name__ == "__main__":
    main()
