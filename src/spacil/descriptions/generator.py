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
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union

from .fileformat import DescriptionSet, is_only_class_name, save_description_file
from .prompt import PROMPT_VERSION, build_prompt

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, "PIL.Image.Image"]  # noqa: F821 (PIL imported lazily)


# ----------------------------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class GenerationParameters:
    """Everything that changes what the model is asked (part of the cache key and the file's metadata)."""

    min_phrases: int = 5
    max_phrases: int = 10
    max_words: int = 12
    temperature: float | None = None
    json_mode: bool = True  # response_format={"type": "json_object"}; some local servers reject it
    image_format: Literal["auto", "png", "jpeg"] = "auto"  # auto: JPEG/PNG files sent as they are
    max_image_side: int | None = None  # downscale larger images (fewer image tokens); None: as they are
    jpeg_quality: int = 90
    image_detail: Literal["low", "high", "auto"] | None = None
    extra_request: Mapping[str, Any] | None = None  # e.g. {"max_completion_tokens": 800}

    def __post_init__(self) -> None:
        if not 1 <= self.min_phrases <= self.max_phrases:
            raise ValueError(f"need 1 <= min_phrases <= max_phrases, got {self.min_phrases}, {self.max_phrases}")
        if self.max_words < 1:
            raise ValueError("max_words must be >= 1")
        if self.image_format not in ("auto", "png", "jpeg"):
            raise ValueError(f"image_format must be auto, png or jpeg, got {self.image_format!r}")
        if self.max_image_side is not None and self.max_image_side < 1:
            raise ValueError("max_image_side must be >= 1 or None")

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


class InvalidAnswer(ValueError):
    """The model answered, but not with a usable phrase list."""


class DescriptionGenerationError(RuntimeError):
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


def _strip_code_fence(text: str) -> str:
    """Servers without JSON mode often wrap the answer in a ```json fence."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def parse_answer(content: str | None, class_name: str, min_phrases: int, max_phrases: int,
                 max_words: int) -> list[str]:
    """Validated phrases of one answer, or :class:`InvalidAnswer` saying why it is unusable.

    Phrases are whitespace-normalised (and lose a trailing full stop); empty ones, case-insensitive
    duplicates, the bare class name and phrases over ``max_words`` words are dropped, then the count
    must lie in ``[min_phrases, max_phrases]``.
    """
    if content is None or not content.strip():
        raise InvalidAnswer("empty answer")
    try:
        doc = json.loads(_strip_code_fence(content))
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("phrases"), list):
        raise InvalidAnswer('expected a JSON object {"phrases": [...]}')
    if not all(isinstance(p, str) for p in doc["phrases"]):
        raise InvalidAnswer("phrases must all be strings")
    kept: list[str] = []
    seen: set[str] = set()
    for raw in doc["phrases"]:
        phrase = " ".join(raw.split()).rstrip(".").strip()
        if not phrase or phrase.casefold() in seen or is_only_class_name(phrase, class_name):
            continue
        if len(phrase.split()) > max_words:
            continue
        seen.add(phrase.casefold())
        kept.append(phrase)
    if not min_phrases <= len(kept) <= max_phrases:
        raise InvalidAnswer(f"{len(kept)} usable phrases (of {len(doc['phrases'])} given), "
                            f"expected {min_phrases}-{max_phrases}")
    return kept


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
        raise ImportError("generating descriptions needs the OpenAI client: install spacil[llm] "
                          "(pip install 'spacil[llm]')") from exc
    return openai


class DescriptionGenerator:
    """Describe classes with a multimodal LLM; resumable through a JSONL cache.

    Retries (invalid answers, 429, timeouts, connection errors, 5xx) wait
    ``min(max_delay, base_delay * 2**(attempt-1))`` seconds, or the server's Retry-After when longer
    (still capped by ``max_delay``). Other API errors (400, 401, ...) fail the class at once.
    """

    def __init__(self, model: str, cache_path: str | os.PathLike[str], *, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", dataset_hint: str | None = None,
                 parameters: GenerationParameters | None = None, timeout: float = 120.0, max_attempts: int = 5,
                 base_delay: float = 2.0, max_delay: float = 60.0, sleep: Callable[[float], None] = time.sleep):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        openai = _import_openai()
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise RuntimeError(f"environment variable {api_key_env} is not set; the API key is read from the "
                               "environment only")
        self.model = model
        self.cache_path = Path(cache_path)
        self.dataset_hint = dataset_hint
        self.parameters = parameters or GenerationParameters()
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
        self._retryable = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                           openai.InternalServerError)

    def __repr__(self) -> str:  # never show the client (it holds the key)
        return f"DescriptionGenerator(model={self.model!r}, cache_path={str(self.cache_path)!r})"

    # -- one class ------------------------------------------------------------------------------------------
    def _parameters_record(self) -> dict[str, Any]:
        return {**self.parameters.to_dict(), "dataset_hint": self.dataset_hint}

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

    def _request_kwargs(self, prompt: str, images: Sequence[EncodedImage]) -> dict[str, Any]:
        p = self.parameters
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for image in images:
            url: dict[str, Any] = {"url": image.data_url}
            if p.image_detail is not None:
                url["detail"] = p.image_detail
            content.append({"type": "image_url", "image_url": url})
        kwargs: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        if p.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if p.temperature is not None:
            kwargs["temperature"] = p.temperature
        if p.extra_request:
            kwargs.update(p.extra_request)
        return kwargs

    def _retry_delay(self, attempt: int, exc: BaseException | None) -> float:
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                delay = min(self.max_delay, max(delay, float(header)))
            except ValueError:
                pass  # HTTP-date form: keep our own backoff
        return delay

    def _ask(self, name: str, prompt: str, images: Sequence[EncodedImage]) -> tuple[list[str], int]:
        """Phrases and the number of attempts used; raises :class:`_ClassFailed` when out of attempts."""
        kwargs = self._request_kwargs(prompt, images)
        p = self.parameters
        for attempt in range(1, self.max_attempts + 1):
            error: BaseException | None = None
            try:
                response = self._client.chat.completions.create(**kwargs)
                content = response.choices[0].message.content if response.choices else None
                return parse_answer(content, name, p.min_phrases, p.max_phrases, p.max_words), attempt
            except InvalidAnswer as exc:
                reason, error = f"invalid answer: {exc}", exc
            except self._retryable as exc:
                reason, error = f"{type(exc).__name__}: {exc}", exc
            except self._openai.APIStatusError as exc:  # 4xx other than 429: retrying will not help
                raise _ClassFailed(f"{type(exc).__name__} (HTTP {exc.status_code}): {exc}", attempt) from exc
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
                    phrases, attempts = self._ask(name, prompt, images)
                    entry = CacheEntry(key=key, class_name=name, phrases=phrases,
                                       parameters=self._parameters_record(), provenance={
                                           "model": self.model, "prompt_version": PROMPT_VERSION,
                                           "image_ids": [i.image_id for i in images],
                                           "image_sha256": [i.sha256 for i in images],
                                           "time": _utc_now(), "attempts": attempts})
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


class _ClassFailed(Exception):
    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


# ----------------------------------------------------------------------------------------------- export
def _one(values: list[Any], what: str) -> Any:
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) != 1:
        raise ValueError(f"cache entries come from different {what}s ({len(distinct)}); export them separately")
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
        raise ValueError(f"no generated descriptions for {len(missing)} class(es): {', '.join(missing)}")
    if missing:
        logger.warning("description file %s leaves out %d class(es) without descriptions: %s", path, len(missing),
                       ", ".join(missing))
    chosen = [by_name[n] for n in class_order if n in by_name]
    if not chosen:
        raise ValueError("no entries to export")
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
    keep = ("model", "prompt_version", "image_ids", "image_sha256", "time", "attempts")
    descriptions = DescriptionSet(
        dataset=dataset, classes={e.class_name: list(e.phrases) for e in chosen}, produced_by=produced_by,
        generator={"model": model, "prompt_version": prompt_version, "parameters": parameters},
        provenance={e.class_name: {k: e.provenance[k] for k in keep if k in e.provenance} for e in chosen})
    save_description_file(descriptions, path)
    return descriptions
