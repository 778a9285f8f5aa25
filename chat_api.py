"""A small client for OpenAI-compatible `/v1/chat/completions` servers (OpenAI, vLLM, Ollama, TGI, ...) and a
resumable thread-pool runner that writes one JSONL line per finished item.

Used by hallucinate.py (`api`: inject hallucinations into ground-truth answers) and eval.py (MMHal-Bench judge).

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1   # default https://api.openai.com/v1
    export OPENAI_API_KEY=...                         # read once, sent as a Bearer header, never logged or written

    from chat_api import chat, run_jsonl_jobs, image_data_url
    text = chat([{"role": "user", "content": "Hi"}], model="gpt-4o-mini", validate=lambda t: None)
    summary = run_jsonl_jobs(items, key_fn=lambda it: it["id"], work_fn=judge_one, output_path="out.jsonl")

Retries (`ChatClient.chat`): 408/409/425/429 and 5xx answers, timeouts, connection errors, malformed replies
(not JSON, no choices, empty text) and replies the caller's `validate(text)` rejects are retried up to
`max_attempts` times with exponential backoff (base * 2^k, capped) times a random jitter factor in [0.5, 1.5);
a `Retry-After` header (seconds or an HTTP date) is a lower bound on the wait. Other 4xx (bad request, auth) fail
at once. When every attempt failed, `ChatError` lists the reason of each attempt.

Runner file contract (`run_jsonl_jobs`):
- `output_path` holds one JSON object per *successful* item, keyed by `key_field`; each line is written with a
  single `os.write` of the whole line (newline included) under a lock, so a killed run leaves at most one
  truncated last line. On restart that line is cut off (and logged), and every item whose key is already in the
  file is skipped: no item is done twice, none is lost.
- Failures never abort the run: each failed item gets one line {key_field, "error"} in the side file
  `<output stem>.failed.jsonl`, and stays out of the output so the next run retries it. The side file describes
  the latest run only: it is removed at the start of a run and written again only if something fails.
- The returned `JobSummary` (done, skipped, failed with reasons) is also logged when the run ends.
Keys are compared as strings, so an id 7 and an id "7" are the same item.
"""
from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import requests

log = logging.getLogger("povid.chat_api")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx


class ChatError(RuntimeError):
    """Every attempt failed (or a non-retryable error). `reasons`: one line per attempt; `last_kind` is one of
    "http", "timeout", "connection", "malformed", "validation"; `last_text` is the last reply text, if any."""

    def __init__(self, message: str, reasons: list[str], last_kind: str, last_text: str | None = None):
        super().__init__(f"{message}: " + " | ".join(reasons))
        self.reasons, self.last_kind, self.last_text = reasons, last_kind, last_text


class _AttemptFailed(Exception):
    def __init__(self, kind: str, reason: str, retry_after: float | None = None, text: str | None = None,
                 retryable: bool = True):
        super().__init__(reason)
        self.kind, self.reason, self.retry_after, self.text, self.retryable = kind, reason, retry_after, text, retryable


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def reply_text(data) -> str:
    """The assistant text of a chat.completion object; ValueError when the reply has no usable text."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("reply has no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise ValueError("reply text is empty")
    return content


class ChatClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, max_attempts: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, max_retry_after_s: float = 300.0,
                 sleep=time.sleep, seed: int | None = None):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.sleep = sleep  # injectable so tests can check waits without waiting
        self._rng = random.Random(seed)
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)

    def __repr__(self):  # never show the key
        return f"ChatClient(base_url={self.base_url!r}, max_attempts={self.max_attempts})"

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay

    def _attempt(self, payload: dict, timeout: float, validate) -> str:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            r = self._session().post(f"{self.base_url}/chat/completions", json=payload, headers=headers,
                                     timeout=timeout)
            body = r.text  # reading the body can itself fail on a truncated reply
        except requests.Timeout:
            raise _AttemptFailed("timeout", f"timed out after {timeout:g}s") from None
        except requests.ConnectionError as e:
            raise _AttemptFailed("connection", f"connection error: {type(e).__name__}") from None
        except requests.RequestException as e:  # truncated body, bad chunking, ...
            raise _AttemptFailed("malformed", f"broken reply: {type(e).__name__}") from None
        if r.status_code != 200:
            snippet = " ".join(body[:200].split())
            retryable = r.status_code in RETRY_STATUS or r.status_code >= 500
            raise _AttemptFailed("http", f"HTTP {r.status_code}: {snippet}",
                                 parse_retry_after(r.headers.get("Retry-After")), retryable=retryable)
        try:
            text = reply_text(json.loads(body))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise _AttemptFailed("malformed", f"malformed reply ({e.__class__.__name__}: {str(e)[:120]})") from None
        if validate is not None:
            try:
                verdict = validate(text)
            except ValueError as e:
                verdict = str(e) or "rejected by validate()"
            if verdict is not None and verdict is not True:
                raise _AttemptFailed("validation", f"invalid reply: {verdict or 'rejected by validate()'}",
                                     text=text)
        return text

    def chat(self, messages: list[dict], model: str, temperature: float = 0.0, max_tokens: int = 512,
             timeout: float = 60.0, response_format: dict | None = None, validate=None) -> str:
        """Return the assistant text. `validate(text)` returns None/True when the reply is usable, else a reason
        string (or raises ValueError); rejected replies are retried like server errors."""
        payload = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        if response_format is not None:
            payload["response_format"] = response_format
        reasons: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(payload, timeout, validate)
            except _AttemptFailed as f:
                reason = self.redact(f.reason)
                reasons.append(f"#{attempt} {reason}")
                if not f.retryable or attempt == self.max_attempts:
                    what = "non-retryable error" if not f.retryable else f"all {attempt} attempts failed"
                    raise ChatError(f"chat completion at {self.base_url}: {what}", reasons, f.kind,
                                    f.text) from None
                delay = self.backoff(attempt, f.retry_after)
                log.warning("chat attempt %d/%d failed (%s); retrying in %.2fs", attempt, self.max_attempts,
                            reason, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")


_default: tuple[tuple, ChatClient] | None = None
_default_lock = threading.Lock()


def chat(messages: list[dict], model: str, temperature: float = 0.0, max_tokens: int = 512, timeout: float = 60.0,
         response_format: dict | None = None, validate=None) -> str:
    """`ChatClient.chat` on a shared client configured from OPENAI_BASE_URL / OPENAI_API_KEY."""
    global _default
    env = (os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY"))
    with _default_lock:
        if _default is None or _default[0] != env:
            _default = (env, ChatClient())
        client = _default[1]
    return client.chat(messages, model, temperature, max_tokens, timeout, response_format, validate)


def image_data_url(path_or_pil) -> str:
    """A `data:image/...;base64,...` URL for an image file (PNG/JPEG/GIF/WEBP kept as is) or a PIL image (PNG),
    ready for an OpenAI image_url content part."""
    if hasattr(path_or_pil, "save"):  # a PIL image
        import io
        buf = io.BytesIO()
        path_or_pil.save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    else:
        try:
            with open(path_or_pil, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read image {path_or_pil}: {e.strerror}") from None
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            mime = "image/png"
        elif data.startswith(b"\xff\xd8\xff"):
            mime = "image/jpeg"
        elif data[:6] in (b"GIF87a", b"GIF89a"):
            mime = "image/gif"
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            mime = "image/webp"
        else:
            raise ValueError(f"{path_or_pil}: not a PNG, JPEG, GIF or WEBP file")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------- JSONL job runner
def _redact_env(text: str) -> str:
    key = os.environ.get("OPENAI_API_KEY")
    return text.replace(key, "***") if key else text


def failed_path_for(output_path: str) -> str:
    stem = output_path[:-6] if output_path.endswith(".jsonl") else output_path
    return stem + ".failed.jsonl"


class JsonlAppender:
    """Append one JSON line per call with a single os.write under a lock (thread-safe, kill-safe)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def write(self, record: dict):
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:  # os.write on a regular file writes everything unless interrupted; loop to be sure
                view = view[os.write(self._fd, view):]

    def close(self):
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def resume_jsonl(path: str, key_field: str) -> list[dict]:
    """Records already in a JSONL output. A last line without its newline is what a killed writer leaves: it is cut
    off the file (with a warning) so its item is redone. Any other unreadable line, a missing key or a repeated key
    is an error naming the line: the file is not ours to guess about."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        raw = f.read()
    good_len = raw.rfind(b"\n") + 1
    if good_len < len(raw):
        log.warning("%s: dropping a truncated last line (%d bytes, left by a killed run); its item will be redone",
                    path, len(raw) - good_len)
        os.truncate(path, good_len)
    records, seen = [], set()
    for lineno, line in enumerate(raw[:good_len].split(b"\n")[:-1], 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not a JSON line; fix or remove it before resuming") from None
        if not isinstance(rec, dict) or key_field not in rec:
            raise ValueError(f"{path}:{lineno}: record has no {key_field!r} key")
        key = str(rec[key_field])
        if key in seen:
            raise ValueError(f"{path}:{lineno}: {key_field} {key!r} appears twice")
        seen.add(key)
        records.append(rec)
    return records


@dataclass
class JobSummary:
    done: int = 0
    skipped: int = 0
    failed: dict = field(default_factory=dict)  # key -> reason

    def __str__(self):
        s = f"done {self.done}, skipped {self.skipped} (already in output), failed {len(self.failed)}"
        for k, why in list(self.failed.items())[:10]:
            s += f"\n  failed {k}: {why}"
        if len(self.failed) > 10:
            s += f"\n  ... and {len(self.failed) - 10} more (see the .failed.jsonl file)"
        return s


def run_jsonl_jobs(items, key_fn, work_fn, output_path: str, workers: int = 4, key_field: str = "id",
                   failed_path: str | None = None, progress_every_s: float = 30.0) -> JobSummary:
    """Run `work_fn(item) -> dict` over the items not yet in `output_path`, `workers` at a time; see the module
    docstring for the file contract. The record gets `key_field` = key_fn(item) when work_fn leaves it out."""
    failed_path = failed_path or failed_path_for(output_path)
    items = list(items)
    keys, seen = [], set()
    for i, it in enumerate(items):
        k = str(key_fn(it))
        if k in seen:
            raise ValueError(f"item {i}: {key_field} {k!r} appears twice in the input")
        seen.add(k)
        keys.append(k)
    done_keys = {str(r[key_field]) for r in resume_jsonl(output_path, key_field)}
    if os.path.exists(failed_path):
        os.remove(failed_path)  # describes the latest run only
    todo = [(k, it) for k, it in zip(keys, items) if k not in done_keys]
    summary = JobSummary(skipped=len(items) - len(todo))
    out, failed_out = JsonlAppender(output_path), None
    lock = threading.Lock()

    def one(key, item):
        nonlocal failed_out
        try:
            rec = work_fn(item)
            if not isinstance(rec, dict):
                raise TypeError(f"work_fn returned {type(rec).__name__}, not a dict")
            rec.setdefault(key_field, key_fn(item))
            if str(rec[key_field]) != key:
                raise ValueError(f"work_fn returned {key_field} {rec[key_field]!r} for item {key!r}")
            out.write(rec)
            return key, None
        except Exception as e:  # noqa: BLE001 - any per-item failure is recorded, the run goes on
            reason = _redact_env(f"{type(e).__name__}: {e}")
            with lock:
                if failed_out is None:
                    failed_out = JsonlAppender(failed_path)
            failed_out.write({key_field: key_fn(item), "error": reason})
            return key, reason

    def collect(futs):
        for f in futs:
            key, reason = f.result()
            if reason is None:
                summary.done += 1
            else:
                summary.failed[key] = reason

    start = last_log = time.time()
    ex = ThreadPoolExecutor(max(1, workers))
    pending: set = set()
    try:
        for key, item in todo:
            while len(pending) >= 2 * max(1, workers):  # bounded: a huge item list is not all queued at once
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(finished)
                if time.time() - last_log > progress_every_s:
                    last_log = time.time()
                    n = summary.done + len(summary.failed)
                    eta = (time.time() - start) / n * (len(todo) - n)
                    log.info("%s: %d/%d finished (%d failed), ETA %.0fs", output_path, n, len(todo),
                             len(summary.failed), eta)
            pending.add(ex.submit(one, key, item))
        finished, pending = wait(pending)
        collect(finished)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        out.close()
        if failed_out is not None:
            failed_out.close()
    log.info("%s: %s", output_path, summary)
    return summary
