"""The teacher that answers each question under a style prompt and under the neutral one (seed 002's contrastive
responses): the local model by default, or any OpenAI-compatible chat endpoint named by `teacher_url` (seed 002 used
GPT-4). Both answer greedily (temperature 0), so a rerun asks for the same answers.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Sequence

from common.errors import PipelineError
from common.generation import generate_batch

REQUEST_TIMEOUT_S = 120
ATTEMPTS = 3  # per question, on connection and server errors
RETRY_WAIT_S = 1.0


def chat_prompt(tokenizer, system: str, question: str, chat: bool) -> str:
    """The question as the model reads it: its chat template with `system` (`chat`, from `prompt_style`), or a plain
    layout for a base prompt."""
    if chat:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{system}\n\nQuestion: {question}\nAnswer:"


def local_answers(model, tokenizer, system: str, questions: Sequence[str], chat: bool, max_new_tokens: int,
                  batch_size: int) -> list[str]:
    prompts = [chat_prompt(tokenizer, system, q, chat) for q in questions]
    results = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, add_special_tokens=not chat,
                             batch_size=batch_size)
    return [r.text.strip() for r in results]


def endpoint_answers(url: str, teacher_model: str, system: str, questions: Sequence[str], max_new_tokens: int
                     ) -> list[str]:
    """One chat completion per question from `url` (its base, e.g. http://host:8000/v1); the key, if the endpoint
    wants one, from OPENAI_API_KEY."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    answers = []
    for question in questions:
        body = json.dumps({"model": teacher_model, "temperature": 0, "max_tokens": max_new_tokens,
                           "messages": [{"role": "system", "content": system},
                                        {"role": "user", "content": question}]}).encode()
        request = urllib.request.Request(f"{url.rstrip('/')}/chat/completions", body, headers, method="POST")
        answers.append(_completion(request, url))
    return answers


def _completion(request: urllib.request.Request, url: str) -> str:
    """The reply's text; a connection error, a cut reply, a server error or "too many requests" is tried again
    (ATTEMPTS in all), anything else is one error line at once."""
    attempt = 0
    while True:
        attempt += 1
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                reply = json.loads(response.read())
            return str(reply["choices"][0]["message"]["content"]).strip()
        except urllib.error.HTTPError as exc:
            if (exc.code < 500 and exc.code != 429) or attempt == ATTEMPTS:
                raise PipelineError(f"teacher_url {url}: no chat completion ({exc})") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if attempt == ATTEMPTS:
                raise PipelineError(f"teacher_url {url}: no chat completion ({exc})") from None
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise PipelineError(f"teacher_url {url}: not a chat completion ({exc!r})") from None
        time.sleep(RETRY_WAIT_S * attempt)
