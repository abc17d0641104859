"""Drives spool's OpenAI-compatible routes with the official `openai` package
(tests/e2e/openai_compat.rs runs it). Prints one JSON line per check.

Usage: client.py BASE_URL API_KEY BURST
"""
import concurrent.futures
import json
import sys
import time

import openai

base, key, burst = sys.argv[1], sys.argv[2], int(sys.argv[3])
# No SDK retries: a 429 or 5xx must show up as a failure, not be hidden.
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def report(kind, **fields):
    print(json.dumps({"kind": kind, **fields}), flush=True)


completion = client.chat.completions.create(
    model="default",
    messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what is spool?"},
    ],
)
report(
    "chat",
    id=completion.id,
    object=completion.object,
    content=completion.choices[0].message.content,
    role=completion.choices[0].message.role,
    finish_reason=completion.choices[0].finish_reason,
    total_tokens=completion.usage.total_tokens,
)

pieces = []
finish = None
usage = None
with client.chat.completions.create(
    model="default",
    messages=[{"role": "user", "content": "stream this please"}],
    stream=True,
    stream_options={"include_usage": True},
) as stream:
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.total_tokens
report("stream", content="".join(pieces), chunks=len(pieces), finish_reason=finish, total_tokens=usage)

embeddings = client.embeddings.create(model="default", input=["are you there?", "hello"])
report(
    "embeddings",
    object=embeddings.object,
    vectors=[item.embedding for item in embeddings.data],
    indexes=[item.index for item in embeddings.data],
)

try:
    client.chat.completions.create(model="default", messages=[{"role": "assistant", "content": "hi"}])
    report("error", status=None)
except openai.APIStatusError as error:
    report("error", status=error.status_code, body=error.body)


def ask(i):
    started = time.monotonic()
    try:
        reply = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": f"burst {i}"}]
        )
        return {"ok": True, "content": reply.choices[0].message.content, "secs": time.monotonic() - started}
    except openai.APIError as error:
        return {"ok": False, "error": repr(error)}


with concurrent.futures.ThreadPoolExecutor(max_workers=burst) as pool:
    results = list(pool.map(ask, range(burst)))
report("burst", results=results)
