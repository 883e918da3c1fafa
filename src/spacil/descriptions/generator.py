"""Class-wise descriptions from a multimodal LLM behind an OpenAI-compatible chat-completions API.

One request per class: the prompt (class name, dataset hint) plus the class's guidance images as base64
data URLs. Answers are validated and retried with exponential backoff, and every finished class is
appended to a JSONL cache at once (flush + fsync), so an interrupted run resumes where it stopped and
never pays twice for a class. The API key is read from the environment only; it is handed to the client
and never stored on this object, written to the cache, or logged.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

from ..errors import MissingExtraError, SetupError, SpacilError, UsageError
from .answers import InvalidAnswer, parse_answer
from .fileformat import MAX_PHRASES, MAX_WORDS, MIN_PHRASES, DescriptionSet, save_description_file
from .prompt import PROMPT_VERSION, build_prompt

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, "PIL.Image.Image"]  # noqa: F821 (PIL imported lazily)
ResponseFormat = Literal["auto", "json_schema", "json_object", "none"]
RESPONSE_FORMATS: tuple[str, ...] = ("auto", "json_schema", "json_object", "none")
_AUTO_LADDER = ("json_schema", "json_object", "none")  # tried in this order, stepping down on a 400 naming it
_NAMES_RESPONSE_FORMAT = re.compile(r"response[_ ]?format|json[_ ]?(?:schema|object|mode)|structured output", re.I)


# ----------------------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class GenerationParameters:
    """Everything that changes what the model is asked (part of the cache key and the file's metadata)."""

    min_phrases: int = MIN_PHRASES
    max_phrases: int = MAX_PHRASES
    max_words: int = MAX_WORDS
    temperature: float | None = None
    # how the answer's form is enforced; auto: json_schema, then json_object, then none, as the server allows.
    # Not part of the cache key: it changes the answer's wrapping, not what is asked.
    response_format: ResponseFormat = "auto"
    image_format: Literal["auto", "png", "jpeg"] = "auto"  # auto: JPEG/PNG files sent as they are
    max_image_side: int | None = None  # downscale larger images (fewer image tokens); None: as they are
    jpeg_quality: int = 90
    image_detail: Literal["low", "high", "auto"] | None = None
    extra_request: Mapping[str, Any] | None = None  # e.g. {"max_completion_tokens": 800}

    def __post_init__(self) -> None:
        if not 1 <= self.min_phrases <= self.max_phrases:
            raise UsageError(f"need 1 <= min_phrases <= max_phrases, got {self.min_phrases}, {self.max_phrases}")
        if self.max_words < 1:
            raise UsageError("max_words must be >= 1")
        if self.response_format not in RESPONSE_FORMATS:
            raise UsageError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                             f"got {self.response_format!r}")
        if self.image_format not in ("auto", "png", "jpeg"):
            raise UsageError(f"image_format must be auto, png or jpeg, got {self.image_format!r}")
        if self.max_image_side is not None and self.max_image_side < 1:
            raise UsageError("max_image_side must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["extra_request"] = dict(self.extra_request) if self.extra_request else None
        return d


@dataclass
class ClassImages:
    """One class to describe: its name and guidance images (paths or PIL images), optional ids for provenance."""

    name: str
    images: Sequence[ImageLike]
    image_ids: Sequence[str] | None = None


@dataclass(frozen=True)
class EncodedImage:
    image_id: str
    sha256: str  # digest of the source bytes (file bytes, or the PNG encoding of a PIL image)
    data_url: str


@dataclass
class CacheEntry:
    """One finished class as stored in the JSONL cache."""

    key: str
    class_name: str
    phrases: list[str]
    parameters: dict[str, Any]
    provenance: dict[str, Any]  # model, prompt_version, image_ids, image_sha256, time, attempts

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CacheEntry":
        return cls(key=d["key"], class_name=d["class_name"], phrases=list(d["phrases"]),
                   parameters=dict(d["parameters"]), provenance=dict(d["provenance"]))


@dataclass(frozen=True)
class ProgressEvent:
    index: int  # 0-based position of the class in this run
    total: int
    class_name: str
    status: Literal["done", "cached", "failed"]
    attempts: int


@dataclass
class GenerationSummary:
    """What a run did: classes requested now, found in the cache, and failed (with reasons)."""

    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    entries: dict[str, CacheEntry] = field(default_factory=dict)  # done + cached, in run order

    @property
    def complete(self) -> bool:
        return not self.failed


class DescriptionGenerationError(SpacilError, RuntimeError):
    """A class could not be described; classes finished before it are safe in the cache."""

    def __init__(self, message: str, class_name: str, summary: GenerationSummary):
        super().__init__(message)
        self.class_name = class_name
        self.summary = summary


# ----------------------------------------------------------------------------------------------- helpers
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pil():
    from PIL import Image

    return Image


def _encode_pil(image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError):  # modes PNG cannot store (CMYK, ...)
            buffer = io.BytesIO()
            image.convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: ImageLike, params: GenerationParameters, image_id: str | None = None) -> EncodedImage:
    """An image as a ``data:image/...;base64,`` URL plus the sha256 of its source bytes."""
    Image = _pil()
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        source = path.read_bytes()
        with Image.open(io.BytesIO(source)) as opened:
            opened.load()
            pil, kind = opened.copy(), (opened.format or "").upper()
        image_id = image_id or str(image)
    elif isinstance(image, Image.Image):
        pil, kind = image, ""
        source = _encode_pil(image, "png", params.jpeg_quality)
        image_id = image_id or (getattr(image, "filename", "") or None)
    else:
        raise TypeError(f"images must be file paths or PIL images, got {type(image).__name__}")
    digest = hashlib.sha256(source).hexdigest()
    image_id = image_id or f"sha256:{digest}"
    too_big = params.max_image_side is not None and max(pil.size) > params.max_image_side
    if params.image_format == "auto" and kind in ("JPEG", "PNG") and not too_big:
        payload, mime = source, f"image/{kind.lower()}"
    else:
        if too_big:
            pil = pil.copy()
            pil.thumbnail((params.max_image_side, params.max_image_side), Image.Resampling.BICUBIC)
        fmt = "jpeg" if params.image_format == "jpeg" else "png"
        payload, mime = _encode_pil(pil, fmt, params.jpeg_quality), f"image/{fmt}"
    url = f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
    return EncodedImage(image_id=image_id, sha256=digest, data_url=url)


def cache_key(model: str, prompt_version: str, prompt: str, parameters: Mapping[str, Any],
              image_digests: Iterable[str]) -> str:
    """sha256 over everything that determines the answer; image order does not matter."""
    blob = json.dumps({"model": model, "prompt_version": prompt_version, "prompt": prompt,
                       "parameters": dict(parameters), "images": sorted(image_digests)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- cache
def load_cache(path: str | os.PathLike[str]) -> list[CacheEntry]:
    """Entries of a JSONL cache in file order; a line cut short by a crash is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(CacheEntry.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            logger.warning("%s:%d: skipping unreadable cache line (%s)", path, number, exc)
    return entries


def append_cache(path: str | os.PathLike[str], entry: CacheEntry) -> None:
    """Append one entry durably (flush + fsync) so a crash right after loses nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # previous write was cut short: start a fresh line
                handle.write(b"\n")
        handle.write(entry.to_json().encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------------------------------------- generator
def _import_openai():
    try:
        import openai
    except ImportError as exc:
        raise MissingExtraError("generating descriptions needs the OpenAI client: install spacil[llm] "
                          "(pip install 'spacil[llm]')") from exc
    return openai


class DescriptionGenerator:
    """Describe classes with a multimodal LLM; resumable through a JSONL cache.

    Retries (invalid answers, 429, timeouts, connection errors, 5xx) wait
    ``min(max_delay, base_delay * 2**(attempt-1))`` seconds, or the server's Retry-After (seconds or an
    HTTP date) when longer, still capped by ``max_delay``. A 400 that names the response format steps
    down json_schema -> json_object -> none (with ``response_format="auto"``) for the rest of the run,
    without using up an attempt; other API errors (400, 401, ...) fail the class at once.
    """

    def __init__(self, model: str, cache_path: str | os.PathLike[str], *, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", dataset_hint: str | None = None,
                 parameters: GenerationParameters | None = None, timeout: float = 120.0, max_attempts: int = 5,
                 base_delay: float = 2.0, max_delay: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                 client: Any = None):
        """``client``: anything with ``chat.completions.create(**request)`` answering like the OpenAI client
        (a local stand-in, e.g. the parts-world simulated describer); None builds the OpenAI client."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        self.model = model
        self.cache_path = Path(cache_path)
        self.dataset_hint = dataset_hint
        self.parameters = parameters or GenerationParameters()
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        if client is None:
            openai = _import_openai()
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise SetupError(f"environment variable {api_key_env} is not set; the API key is read from the "
                                 "environment only")
            self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
            self._retryable: tuple[type[BaseException], ...] = (
                openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)
            self._status_error: type[BaseException] = openai.APIStatusError
        else:
            self._client, self._retryable, self._status_error = client, (), _NoStatusError
        mode = self.parameters.response_format
        self._formats = list(_AUTO_LADDER if mode == "auto" else [mode])  # [0]: the one asked for now

    def __repr__(self) -> str:  # never show the client (it holds the key)
        return f"DescriptionGenerator(model={self.model!r}, cache_path={str(self.cache_path)!r})"

    # -- one class ------------------------------------------------------------------------------------------
    def _parameters_record(self) -> dict[str, Any]:
        """What the cache key and the file's metadata record: the response format is left out, so a class
        described once is not asked again when the format (or the server's support for it) changes."""
        record = {**self.parameters.to_dict(), "dataset_hint": self.dataset_hint}
        del record["response_format"]
        return record

    def _response_format(self, mode: str) -> dict[str, Any] | None:
        p = self.parameters
        if mode == "json_object":
            return {"type": "json_object"}
        if mode == "json_schema":
            phrases = {"type": "array", "items": {"type": "string"}, "minItems": p.min_phrases,
                       "maxItems": p.max_phrases}
            return {"type": "json_schema", "json_schema": {"name": "visual_cue_phrases", "strict": True, "schema": {
                "type": "object", "properties": {"phrases": phrases}, "required": ["phrases"],
                "additionalProperties": False}}}
        return None

    def prepare(self, request: ClassImages) -> tuple[str, str, list[EncodedImage]]:
        """(cache key, prompt text, encoded images) of one class, without calling the API."""
        if not request.images:
            raise ValueError(f"class {request.name!r}: no images given")
        ids = list(request.image_ids) if request.image_ids is not None else [None] * len(request.images)
        if len(ids) != len(request.images):
            raise ValueError(f"class {request.name!r}: {len(ids)} image ids for {len(request.images)} images")
        images = [encode_image(img, self.parameters, i) for img, i in zip(request.images, ids)]
        p = self.parameters
        prompt = build_prompt(request.name, self.dataset_hint, p.min_phrases, p.max_phrases, p.max_words,
                              n_images=len(images))
        key = cache_key(self.model, PROMPT_VERSION, prompt, self._parameters_record(), [i.sha256 for i in images])
        return key, prompt, images

    def _request_kwargs(self, prompt: str, images: Sequence[EncodedImage], mode: str = "none") -> dict[str, Any]:
        p = self.parameters
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for image in images:
            url: dict[str, Any] = {"url": image.data_url}
            if p.image_detail is not None:
                url["detail"] = p.image_detail
            content.append({"type": "image_url", "image_url": url})
        kwargs: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        response_format = self._response_format(mode)
        if response_format is not None:
            kwargs["response_format"] = response_format
        if p.temperature is not None:
            kwargs["temperature"] = p.temperature
        if p.extra_request:
            kwargs.update(p.extra_request)
        return kwargs

    def _retry_delay(self, attempt: int, exc: BaseException | None) -> float:
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        response = getattr(exc, "response", None)
        server = _retry_after_seconds(response.headers) if response is not None else None
        return delay if server is None else min(self.max_delay, max(delay, server))

    def _complete(self, prompt: str, images: Sequence[EncodedImage]) -> tuple[str | None, str]:
        """Answer text and the response format it was asked in, stepping down when the server rejects one."""
        while True:
            mode = self._formats[0]
            try:
                response = self._client.chat.completions.create(**self._request_kwargs(prompt, images, mode))
            except self._status_error as exc:
                if len(self._formats) > 1 and _rejects_response_format(exc):
                    self._formats.pop(0)
                    logger.warning("the server does not accept response_format %s (%s); asking with %s from now on",
                                   mode, _error_message(exc), self._formats[0])
                    continue
                raise
            return (response.choices[0].message.content if response.choices else None), mode

    def _ask(self, name: str, prompt: str, images: Sequence[EncodedImage]) -> tuple[list[str], int, str]:
        """Phrases, attempts used and the response format of the answer; :class:`_ClassFailed` when out of
        attempts."""
        p = self.parameters
        for attempt in range(1, self.max_attempts + 1):
            error: BaseException | None = None
            try:
                content, mode = self._complete(prompt, images)
                return parse_answer(content, name, p.min_phrases, p.max_phrases, p.max_words), attempt, mode
            except InvalidAnswer as exc:
                reason, error = f"invalid answer: {exc}", exc
            except self._retryable as exc:
                reason, error = f"{type(exc).__name__}: {exc}", exc
            except self._status_error as exc:  # 4xx other than 429: retrying will not help
                hint = ""
                if self._formats[0] != "none" and _rejects_response_format(exc):
                    hint = f"; the server rejects response_format {self._formats[0]}: use 'auto' or 'none'"
                raise _ClassFailed(f"{type(exc).__name__} (HTTP {exc.status_code}): {exc}{hint}", attempt) from exc
            if attempt == self.max_attempts:
                raise _ClassFailed(f"gave up after {attempt} attempt(s); last error: {reason}", attempt) from error
            delay = self._retry_delay(attempt, error)
            logger.warning("class %r: attempt %d/%d failed (%s); retrying in %.2f s", name, attempt,
                           self.max_attempts, reason, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    # -- a run ----------------------------------------------------------------------------------------------
    def generate(self, classes: Sequence[ClassImages] | Mapping[str, Sequence[ImageLike]],
                 progress: Callable[[ProgressEvent], None] | None = None,
                 on_failure: Literal["raise", "skip"] = "raise") -> GenerationSummary:
        """Describe every class not already in the cache, appending each result as soon as it is in.

        ``on_failure="raise"`` stops at the first failed class (:class:`DescriptionGenerationError`, with the
        summary so far); ``"skip"`` records the reason in ``summary.failed`` and goes on.
        """
        if on_failure not in ("raise", "skip"):
            raise ValueError("on_failure must be 'raise' or 'skip'")
        requests = ([ClassImages(n, list(imgs)) for n, imgs in classes.items()] if isinstance(classes, Mapping)
                    else list(classes))
        names = [r.name for r in requests]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique within one run")
        cached = {e.key: e for e in load_cache(self.cache_path)}
        summary = GenerationSummary()
        for index, request in enumerate(requests):
            name, attempts = request.name, 0
            try:
                key, prompt, images = self.prepare(request)
                if key in cached:
                    entry = cached[key]
                    status: Literal["done", "cached", "failed"] = "cached"
                    summary.cached.append(name)
                else:
                    phrases, attempts, mode = self._ask(name, prompt, images)
                    entry = CacheEntry(key=key, class_name=name, phrases=phrases,
                                       parameters=self._parameters_record(), provenance={
                                           "model": self.model, "prompt_version": PROMPT_VERSION,
                                           "image_ids": [i.image_id for i in images],
                                           "image_sha256": [i.sha256 for i in images],
                                           "time": _utc_now(), "attempts": attempts,
                                           "response_format": mode})
                    append_cache(self.cache_path, entry)
                    cached[key] = entry
                    status = "done"
                    summary.done.append(name)
                summary.entries[name] = entry
            except Exception as exc:  # noqa: BLE001 - recorded per class, re-raised below when asked
                if isinstance(exc, _ClassFailed):
                    reason, attempts = exc.reason, exc.attempts
                else:
                    reason = f"{type(exc).__name__}: {exc}"
                summary.failed[name] = reason
                logger.warning("class %r failed: %s", name, reason)
                if progress is not None:
                    progress(ProgressEvent(index, len(requests), name, "failed", attempts))
                if on_failure == "raise":
                    raise DescriptionGenerationError(f"class {name!r} failed: {reason}", name, summary) from exc
                continue
            if progress is not None:
                progress(ProgressEvent(index, len(requests), name, status, attempts))
        logger.info("descriptions: %d generated, %d from cache, %d failed", len(summary.done), len(summary.cached),
                    len(summary.failed))
        return summary


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait: ``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        body = body.get("error", body)
    message = body.get("message") if isinstance(body, Mapping) else None
    return str(message or exc)


def _rejects_response_format(exc: BaseException) -> bool:
    """A 400/422 whose message names response_format, JSON mode or json_schema."""
    return getattr(exc, "status_code", None) in (400, 422) and bool(
        _NAMES_RESPONSE_FORMAT.search(_error_message(exc)))


class _NoStatusError(Exception):
    """Never raised: stands for the API's status errors when a local client answers."""


class _ClassFailed(Exception):
    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


# ----------------------------------------------------------------------------------------------- export
def _one(values: list[Any], what: str) -> Any:
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) != 1:
        raise UsageError(f"cache entries come from different {what}s ({len(distinct)}); export them separately")
    return values[0]


def export_description_file(entries: Mapping[str, CacheEntry] | Iterable[CacheEntry], class_order: Sequence[str],
                            dataset: str, path: str | os.PathLike[str], *, produced_by: str | None = None,
                            image_selection: str | None = None, allow_missing: bool = False) -> DescriptionSet:
    """Write generated phrases as a contract description file, classes in ``class_order``.

    With an iterable (e.g. :func:`load_cache`), the last entry of a class wins. ``image_selection`` adds how
    the images were chosen to the ``produced_by`` statement (e.g. "3 representative + 2 diverse training
    images chosen by spacil visual guidance from frozen CLIP features"). Missing classes are an error
    unless ``allow_missing`` (then they are left out and named in a warning).
    """
    by_name = dict(entries) if isinstance(entries, Mapping) else {e.class_name: e for e in entries}
    missing = [n for n in class_order if n not in by_name]
    if missing and not allow_missing:
        raise UsageError(f"no generated descriptions for {len(missing)} class(es): {', '.join(missing)}")
    if missing:
        logger.warning("description file %s leaves out %d class(es) without descriptions: %s", path, len(missing),
                       ", ".join(missing))
    chosen = [by_name[n] for n in class_order if n in by_name]
    if not chosen:
        raise UsageError("no entries to export")
    model = _one([e.provenance["model"] for e in chosen], "model")
    prompt_version = _one([e.provenance["prompt_version"] for e in chosen], "prompt version")
    parameters = _one([e.parameters for e in chosen], "generation parameter")
    counts = sorted({len(e.provenance.get("image_ids", [])) for e in chosen})
    n_images = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if produced_by is None:
        produced_by = (
            f"Generated by the multimodal LLM '{model}' through an OpenAI-compatible chat-completions API "
            f"(spacil prompt {prompt_version}): one request per class showing the class name and {n_images} of "
            "its training images (listed per class in provenance.image_ids, with their sha256)"
            + (f"; images: {image_selection}" if image_selection else "")
            + ". Answers were checked automatically (JSON, phrase count, duplicates, bare class name, length) "
            "and not edited by hand."
        )
    keep = ("model", "prompt_version", "image_ids", "image_sha256", "time", "attempts", "response_format")
    descriptions = DescriptionSet(
        dataset=dataset, classes={e.class_name: list(e.phrases) for e in chosen}, produced_by=produced_by,
        generator={"model": model, "prompt_version": prompt_version, "parameters": parameters},
        provenance={e.class_name: {k: e.provenance[k] for k in keep if k in e.provenance} for e in chosen})
    save_description_file(descriptions, path)
    return descriptions
