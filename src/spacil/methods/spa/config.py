"""SPA's config section (``method.spa``): every choice where the paper is silent is a field here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ...schema import StrictModel


class SemanticTokenConfig(StrictModel):
    """Which text features stand for a class on the patch-level side."""

    kind: Literal["phrase", "word", "phrase+word"] = Field(
        "phrase",
        description="'phrase': one token per description phrase (its projected [EOS]); 'word': the projected "
        "word-token outputs of every phrase; 'phrase+word': both.",
    )
    phrase_template: str = Field(
        "{phrase}", description="How a phrase is put to the text encoder; may use {phrase} and {name}."
    )

    @field_validator("phrase_template")
    @classmethod
    def _has_phrase(cls, v: str) -> str:
        if "{phrase}" not in v:
            raise ValueError("phrase_template needs a '{phrase}' slot")
        return v


class SelectionConfig(StrictModel):
    """Description-guided choice of the patch tokens an image contributes to a class's score."""

    rule: Literal["description", "token_max", "random", "all"] = Field(
        "description",
        description="Relevance of a patch to class c: 'description' = cosine to c's mean description embedding, "
        "'token_max' = max cosine over c's semantic tokens; 'random' (ablation) ignores relevance; 'all' keeps every patch.",
    )
    k: int = Field(16, ge=1, description="Patches kept per (image, class); clipped to the number of patches.")
    context_weight: float = Field(
        1.0, ge=0, description="Our addition: relevance minus this times the patch's cosine to its image's mean "
        "patch, so patches that stand out from their image (parts) win over background; 0 = plain relevance.")
    random_seed: int = Field(0, description="rule=random selects by a fixed random direction per class drawn "
                             "from this seed, so an image gets the same selection in training, evaluation and "
                             "whatever batch it is scored in.")


class OTConfig(StrictModel):
    """Entropic optimal transport between selected patches and semantic tokens."""

    aggregation: Literal["ot", "mean"] = Field(
        "ot", description="'ot': transport-weighted similarity; 'mean' (ablation): cosine of mean-pooled patches and tokens."
    )
    eps: float = Field(0.1, gt=0, description="Entropic regularisation (cost = 1 - cosine).")
    iterations: int = Field(30, ge=1, description="Fixed Sinkhorn iterations (no host sync inside the loop).")
    detach_plan: bool = Field(True, description="Gradient only through the similarities, not the iterations.")
    domain: Literal["auto", "log", "exp"] = Field(
        "auto", description="Sinkhorn domain. 'auto': exp (batched matrix scaling, fast) when cost range / eps <= 50 "
        "in float32 (cosine costs: eps >= 0.04), else log (logsumexp, safe for any eps)."
    )
    check_convergence: Literal["off", "warn", "error"] = Field(
        "warn", description="After the iterations, compare the plans' marginals with the masses (one host sync per "
        "call): 'warn' logs once per setting, 'error' raises, 'off' skips the check."
    )
    convergence_tol: float = Field(1e-2, gt=0, description="Tolerance on each plan's L1 marginal error.")
    compile: bool = Field(False, description="Run the Sinkhorn iterations through torch.compile (eager fallback).")


class ProjectorConfig(StrictModel):
    """Lightweight trainable adapters on top of the frozen features."""

    per_task: bool = Field(True, description="A new projector per task, older ones frozen; false = one shared projector.")
    hidden_dim: int = Field(256, ge=1, description="Bottleneck width of each residual projector.")
    text: bool = Field(True, description="Also adapt the text side (class prompts, and semantic tokens when "
                       "scope=all).")
    patch: Literal["first_task", "per_task", "frozen"] = Field(
        "first_task", description="The patch branch under scope=global. 'first_task' (our choice, chosen on "
        "validation): one patch projector, trained through the OT score in the first task and frozen after it "
        "(first-session adaptation, as APER adapts its backbone), so every class is scored in one patch space "
        "and scores compare across tasks; later tasks learn their classes' tokens in that space. 'per_task' (row "
        "`spa_per_task_patches`, with task-centred, gated scores): each task trains its own patch projector and "
        "the classes of task j are scored on patches projected by task j's. Either way a later task cannot move "
        "an old class's patch score; selection ranks patches in the learned space. 'frozen' (row "
        "`spa_frozen_patches`): frozen patches against frozen semantic tokens, no parameter learns through the "
        "OT score.")
    patch_lr_scale: float = Field(
        30.0, gt=0, description="Learning rate of the patch projector relative to train.lr (it starts at "
        "the identity and has one task to learn the patch-phrase alignment; 30 was chosen among 1, 10 and 30 on the "
        "validation accuracy of parts-world tuning worlds 0 and 1).")
    tokens: Literal["learned", "frozen"] = Field(
        "learned", description="With a learned patch projector: 'learned' gives every class an offset on its "
        "semantic tokens, zero at first (the tokens start at its description phrases), trained in its own task "
        "through the OT score and frozen afterwards, so the class's phrases move to where its "
        "parts lie in the patch space (our choice, measured: scripts/patch_branch_ceiling.py); 'frozen' "
        "(row `spa_fixed_tokens`) keeps the phrase embeddings.")
    token_init: Literal["phrases", "random"] = Field(
        "phrases", description="Where learned tokens start: at the description phrases, or (row "
        "`spa_random_tokens`, a control of what the descriptions add) at seeded random unit vectors.")
    token_lr_scale: float = Field(
        30.0, gt=0, description="Learning rate of the token offsets relative to train.lr.")
    scope: Literal["global", "all"] = Field(
        "global", description="What the projectors adapt. 'global': the [CLS] branch (image, prompts, prototypes); "
        "the patch branch aligns frozen patches with frozen semantic tokens, so it cannot drift when later tasks "
        "train (our choice, measured). 'all': patches and semantic tokens too.")


class ReplayConfig(StrictModel):
    """Gaussian old-class calibration: pseudo-features sampled from stored class statistics."""

    enabled: bool = Field(True, description="Pseudo-features of the old classes while later tasks train. The class "
                          "statistics are kept either way when `calibration` needs them.")
    shrinkage: float = Field(0.1, ge=0, le=1, description="Covariance shrinkage towards a scaled identity.")
    samples_per_class: int = Field(32, ge=1, description="Pseudo-features per old class: global ones drawn anew "
                                   "every epoch; pseudo patch sets once per task (their scores are constants when "
                                   "the patch branch is frozen).")
    patch_mode: Literal["none", "selected_tokens", "image"] = Field(
        "image",
        description="Patch branch replay. 'image': a pseudo image offers all P patches like a real one: k drawn "
        "from a Gaussian over the class's description-selected patch tokens, P - k from a Gaussian over its other "
        "tokens. 'selected_tokens': only the k selected-token draws. 'none': global features only (pseudo-features "
        "then have no patch term, in training and in the calibration).",
    )
    loss_weight: float = Field(1.0, ge=0)
    calibration: Literal["none", "task_bias"] = Field(
        "task_bias",
        description="Our addition: after each task, fit one logit offset per task on balanced pseudo-features of "
        "every seen class (the model frozen), so the newest task's classes do not win by recency alone.")
    calibration_samples: int = Field(64, ge=2, description="Pseudo-features per seen class for the calibration fit. "
                                     "Each class's pseudo patch sets are regenerated from a per-class seed, and their "
                                     "patch scores against classes of earlier tasks are kept, so a task scores them "
                                     "against its new classes only (cost linear in the seen classes).")
    pool_size: int = Field(16, ge=1, description="Pseudo images per class whose patch scores are kept (regenerated "
                           "from a per-class seed, scored once against each later task's classes): the calibration "
                           "and the frozen branch's replay pair their fresh global draws with these, cyclically.")
    max_pseudo_per_step: int = Field(64, ge=1, description="At most this many pseudo-features of old classes join "
                                     "each training step (a fixed budget, so a task's cost grows linearly with the "
                                     "seen classes, not with their square).")
    calibration_seed_offset: int = Field(2, description="Its generator is seeded with the task seed plus this.")


class SPAConfig(StrictModel):
    """SPA: global [CLS]-text alignment plus description-guided patch-level OT alignment."""

    patch_branch: bool = Field(True, description="false = the CLS-only variant (global branch alone).")
    patch_loss_weight: float = Field(
        1.0, ge=0, description="Our addition: with per-task patch projectors, also a cross-entropy over the new "
        "task's classes on the patch score alone (scaled by logit_scale), so the patch projector keeps learning the "
        "alignment after the fused logits already fit the training images (row `spa_no_patch_loss` = 0).")
    patch_centering: Literal["none", "task"] = Field(
        "none", description="'task': the patch score of class c minus the mean patch score of the classes of c's "
        "task, per image, before fusion, so a task's own patch projector (projector.patch=per_task) cannot raise "
        "its classes over older ones (part of row `spa_per_task_patches`; `spa_centred_patches` adds it to the "
        "default). With one patch space for all classes (first_task) the scores compare as they are.")
    patch_gate: Literal["none", "task_probability"] = Field(
        "none", description="'task_probability': the (centred) patch score of class c is weighted by the global "
        "branch's probability mass on c's task (softmax over the seen classes, summed per task, no gradient), so a "
        "task's own patch projector re-ranks its classes where the [CLS] branch places the image instead of "
        "pulling other tasks' images to them (part of row `spa_per_task_patches`; `spa_gated_patches` adds it to "
        "the default).")
    global_descriptions: bool = Field(
        False, description="The class text of the global branch is the normalised sum of the class prompt and the "
        "class's mean description-phrase embedding (our control: what descriptions add without patches; row "
        "`clsonly_desc`).")
    fusion_weight: float = Field(1.0, ge=0, description="Patch score weight in logit = scale * (global + w * patch).")
    prototype_weight: float = Field(
        1.0, ge=0, description="Weight of the visual-prototype term in the global score (cosine of the adapted image "
        "to the adapted class mean of frozen features, as in PROOF); 0 = text prompts only.")
    logit_scale: float = Field(20.0, gt=0)
    sampling_seed_offset: int = Field(
        1, description="The device generator (pseudo-features, random selection in training) is seeded with the "
        "task seed plus this offset, so its stream differs from the CPU generator that shuffles.")
    semantic: SemanticTokenConfig = Field(default_factory=SemanticTokenConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    ot: OTConfig = Field(default_factory=OTConfig)
    projector: ProjectorConfig = Field(default_factory=ProjectorConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
