"""A simulated multimodal describer: the parts-world stand-in for the LLM that `spa-cil describe` calls.

It answers the very request `spa-cil describe` sends (the prompt and the class's guidance images, chosen
from frozen CLIP features by :mod:`spacil.descriptions.guidance`) through the same generator, answer
checks, cache and file format. What it may write comes from *those images only*: each image is looked
up by the sha256 of its bytes in the renderer's per-image annotations (which parts are drawn, how many
of their pixels are visible, which part is faded). A part is noticed with probability equal to the share
of the shown images in which it is clearly visible: never when it is hidden, cut off or faded in all of
them, always when it is clear in all of them; so which images are shown matters.

Like a real model it is wrong in seeded, documented ways (rates in :class:`DescriberSettings`):

- ``miss_rate``: each visible cue (body shape, colour, each part) is left out with this probability;
- ``confusion_rate``: a part it does name is given the value a sibling class (same group, same global
  look) has for that part kind, or another value of the kind when no sibling differs there;
- ``filler_rate``: each of two slots gets a generic phrase true of every class ("cartoon creature");
  an answer with fewer than the requested minimum of phrases is padded with generic phrases too;
- ``reword_rate``: a phrase is put in other words (:mod:`.wording`), as a model words things its own way.

The sibling classes' part values are the simulator's error model (what a model confuses a class with),
never an answer: they can only make descriptions worse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
from PIL import Image
from pydantic import Field

from ..errors import UsageError
from ..schema import StrictModel
from .captions import seen_kinds
from .classes import ClassSpec
from .dataset import generate_item_layers
from .render import RenderConfig, Variation
from .vocabulary import NONE, VOCABULARY, PartValues
from .wording import GENERIC_PHRASES, wordings

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)

DESCRIBER_VERSION = "1"  # bump when what the describer writes for the same request changes


class DescriberSettings(StrictModel):
    """The simulated describer's error rates and the guidance images it is shown."""

    miss_rate: float = Field(0.25, ge=0, le=1, description="A visible cue is left out with this probability.")
    confusion_rate: float = Field(0.15, ge=0, le=1, description="A named part takes a sibling class's value.")
    filler_rate: float = Field(0.5, ge=0, le=1, description="Each of two slots gets a generic phrase.")
    reword_rate: float = Field(0.5, ge=0, le=1, description="A phrase is put in other words.")
    min_visible_pixels: int = Field(8, ge=1, description="A part needs this many visible pixels to be seen.")
    guidance: Literal["centroid", "kmeans", "random"] = Field(
        "centroid", description="Representative rule of the guidance images; 'random' is the ablation "
        "(random training images instead of representative + diverse).")
    n_representative: int = Field(3, ge=0)
    n_diverse: int = Field(2, ge=0)
    seed: int = Field(0, description="Seeds the errors and the guidance selection.")

    def scaled(self, factor: float) -> "DescriberSettings":
        """The same describer with every error rate multiplied by ``factor`` (capped at 1)."""
        rates = {k: min(1.0, getattr(self, k) * factor)
                 for k in ("miss_rate", "confusion_rate", "filler_rate", "reword_rate")}
        return self.model_copy(update=rates)

    @property
    def model_name(self) -> str:
        """Names the describer and every setting that changes its answers (it keys the answer cache)."""
        return (f"spacil-simulated-describer-v{DESCRIBER_VERSION}(miss={self.miss_rate:g},"
                f"confusion={self.confusion_rate:g},filler={self.filler_rate:g},reword={self.reword_rate:g},"
                f"min_pixels={self.min_visible_pixels},seed={self.seed})")


@dataclass(frozen=True)
class ImageAnnotation:
    """What one rendered image shows (from the renderer's label map), and which class it belongs to."""

    class_name: str
    parts: PartValues
    visible_pixels: Mapping[str, int]
    variation: Variation

    def seen(self, min_pixels: int) -> list[str]:
        """Part kinds a viewer would notice in this image."""
        return seen_kinds(self.visible_pixels, self.variation.faded, min_pixels)


def world_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{path} is missing: the simulated describer needs a parts-world folder "
                         "(written by spa-cil demo or spacil.partsworld.write_image_folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def world_specs(manifest: Mapping[str, Any]) -> list[ClassSpec]:
    return [ClassSpec(c["name"], c["group"], PartValues.from_dict(c["parts"])) for c in manifest["classes"]]


def annotate_images(root: Path, image_ids: Sequence[str]) -> dict[str, ImageAnnotation]:
    """Annotations of ``split/<class>/<index>.png`` images of a parts-world folder, by image id.

    Each image is rendered again with its label map from the manifest's seed and settings, and the
    pixels are checked against the file, so an annotation always describes the image that was shown.
    """
    manifest = world_manifest(root)
    specs = {s.name: s for s in world_specs(manifest)}
    config = RenderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["render_config"].items()})
    out = {}
    for image_id in image_ids:
        split, name, file = Path(image_id).parts[-3:]
        spec = specs[name]
        layers = generate_item_layers(spec, int(Path(file).stem), manifest["seed"], manifest["image_size"], split,
                                      config)
        with Image.open(Path(root) / image_id) as shown:
            if not np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(layers.image)):
                raise UsageError(f"{Path(root) / image_id} differs from what its manifest renders; "
                                 "render the world again")
        out[image_id] = ImageAnnotation(name, spec.parts, layers.visible_pixels(), layers.variation)
    return out


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


class SimulatedDescriber:
    """Answers chat-completions requests like a multimodal LLM (``client.chat.completions.create``)."""

    def __init__(self, settings: DescriberSettings, annotations: Mapping[str, ImageAnnotation],
                 siblings: Mapping[str, Sequence[PartValues]], min_phrases: int, max_phrases: int):
        """``annotations``: by sha256 of the image bytes; ``siblings``: per class, the other classes of its group."""
        self.settings = settings
        self.annotations = dict(annotations)
        self.siblings = {k: list(v) for k, v in siblings.items()}
        self.min_phrases, self.max_phrases = min_phrases, max_phrases
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **request: Any) -> Any:
        content = request["messages"][0]["content"]
        urls = [item["image_url"]["url"] for item in content if item.get("type") == "image_url"]
        shown = []
        for url in urls:
            digest = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
            if digest not in self.annotations:
                raise UsageError("the simulated describer was shown an image it has no annotation for")
            shown.append(self.annotations[digest])
        answer = json.dumps({"phrases": self.describe(shown)})
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=answer))])

    def describe(self, shown: Sequence[ImageAnnotation]) -> list[str]:
        """The phrases written for one class from the annotations of the images shown (a fixed number of draws)."""
        names = {a.class_name for a in shown}
        if len(names) != 1:
            raise UsageError(f"one request showed images of {len(names)} classes")
        name = names.pop()
        s = self.settings
        parts = shown[0].parts
        rng = np.random.default_rng(np.random.SeedSequence([s.seed, _stable_int(name)]))
        kinds = VOCABULARY.kind_names
        miss, confuse, reword, notice = (rng.uniform(size=2 + len(kinds)) for _ in range(4))
        picks = rng.integers(0, 1 << 30, size=(3, 2 + len(kinds)))
        filler = rng.uniform(size=2)
        seen_in = {k: sum(k in a.seen(s.min_visible_pixels) for a in shown) for k in kinds}

        cues: list[str] = []
        for i, phrase in enumerate((VOCABULARY.shape(parts.shape).phrase, VOCABULARY.colour(parts.colour).phrase)):
            if miss[i] >= s.miss_rate:
                cues.append(self._word(phrase, reword[i], picks[2, i]))
        for i, kind in enumerate(kinds, start=2):
            value = parts.get(kind)
            # a part clear in every image shown is noticed for sure, one clear in a few of them less often
            if value == NONE or notice[i] >= seen_in[kind] / len(shown) or miss[i] < s.miss_rate:
                continue
            if confuse[i] < s.confusion_rate:
                value = self._confused(name, kind, value, picks[0, i], picks[1, i])
            cues.append(self._word(VOCABULARY.kind(kind).value(value).phrase, reword[i], picks[2, i]))
        generic = [GENERIC_PHRASES[j] for j in rng.permutation(len(GENERIC_PHRASES))]
        n_filler = int((filler < s.filler_rate).sum())
        cues += generic[:n_filler]
        for phrase in generic[n_filler:]:  # a model asked for at least n phrases pads with generic ones
            if len(cues) >= self.min_phrases:
                break
            cues.append(phrase)
        cues = list(dict.fromkeys(cues))[: self.max_phrases]
        return [cues[j] for j in rng.permutation(len(cues))]

    def _word(self, phrase: str, u: float, pick: int) -> str:
        options = wordings(phrase)
        if u >= self.settings.reword_rate or len(options) == 1:
            return phrase
        return options[1 + pick % (len(options) - 1)]

    def _confused(self, name: str, kind: str, value: str, pick_sibling: int, pick_other: int) -> str:
        from_siblings = sorted({p.get(kind) for p in self.siblings.get(name, [])} - {value, NONE})
        if from_siblings:
            return from_siblings[pick_sibling % len(from_siblings)]
        others = [v.name for v in VOCABULARY.kind(kind).values if v.name != value]
        return others[pick_other % len(others)]


def siblings_of(specs: Sequence[ClassSpec]) -> dict[str, list[PartValues]]:
    """Per class, the part values of the other classes of its group (what a describer confuses it with)."""
    return {s.name: [o.parts for o in specs if o.group == s.group and o.name != s.name] for s in specs}


def describe_world(config: "Config", root: Path, settings: DescriberSettings, progress: bool = True) -> Path:
    """Describe every class of the parts world at ``root`` the way `spa-cil describe` would, with the
    simulated describer answering; returns the description file (reused when it already exists).

    ``config`` is the run config: its backbone and feature cache pick the guidance images, so the
    features are encoded once for describing and training alike.
    """
    from ..descriptions.generator import DescriptionGenerator, GenerationParameters, export_description_file
    from ..descriptions.pipeline import DescribeSettings, guidance_requests

    manifest_bytes = (Path(root) / "manifest.json").read_bytes()
    tag = hashlib.sha256("\n".join([settings.model_name, settings.model_dump_json(), config.backbone.name,
                                    str(config.backbone.checkpoint), config.data.resize,
                                    # guidance images skip the validation rows, so the split is part of the key
                                    f"{config.data.validation_fraction}:{config.data.validation_seed}",
                                    hashlib.sha256(manifest_bytes).hexdigest()]).encode()).hexdigest()[:12]
    output = Path(root) / f"descriptions-simulated-{tag}.json"
    if output.is_file():
        logger.info("reusing simulated descriptions %s", output)
        return output
    describe = DescribeSettings(model=settings.model_name, output=output, cache=Path(root) / "describer-cache.jsonl",
                                n_representative=settings.n_representative, n_diverse=settings.n_diverse,
                                selection=settings.guidance, seed=settings.seed)
    requests = guidance_requests(config, describe, progress)
    ids = [i for r in requests for i in r.image_ids]
    by_id = annotate_images(root, ids)
    by_sha = {hashlib.sha256((Path(root) / i).read_bytes()).hexdigest(): a for i, a in by_id.items()}
    parameters = GenerationParameters()
    client = SimulatedDescriber(settings, by_sha, siblings_of(world_specs(json.loads(manifest_bytes))),
                                parameters.min_phrases, parameters.max_phrases)
    generator = DescriptionGenerator(settings.model_name, describe.cache, dataset_hint=None, parameters=parameters,
                                     client=client)
    summary = generator.generate(requests)
    chosen = ("random training images (ablation)" if settings.guidance == "random" else
              f"{settings.n_representative} representative ({settings.guidance}) + {settings.n_diverse} diverse "
              "(farthest-point)")
    if config.data.validation_fraction > 0:
        chosen += f" non-validation (data.validation_fraction {config.data.validation_fraction})"
    produced_by = (f"Simulated multimodal describer {settings.model_name} (spacil.partsworld.describer), standing in "
                   f"for an LLM: one spa-cil describe request per class showing {chosen} training images chosen from "
                   f"frozen {config.backbone.name} features (seed {settings.seed}; listed per class in "
                   "provenance.image_ids). It writes phrases from what those images show (the renderer's per-image "
                   "annotations), with seeded rates of missed cues, sibling-class confusions, generic filler and "
                   "rewording; answers were checked like an LLM's and not edited.")
    export_description_file(summary.entries, [r.name for r in requests], str(json.loads(manifest_bytes).get("dataset", "partsworld")),
                            output, produced_by=produced_by)
    logger.info("simulated descriptions written to %s", output)
    return output

