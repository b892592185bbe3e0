"""What each stage of the study costs, counted from the config before it runs (``lensteer run --plan``).

A stage's work is counted in the units its time goes in: **decoding steps** (one forward of a whole batch:
a fixed cost per step, :attr:`Rates.step_seconds`, plus a cost per row, :attr:`Rates.row_seconds`, so 64
rows in one batch cost far less than 64 rows one at a time) and tokens run **teacher-forced** (prompt
prefills, KL, perplexity, capability, activations). Every generate call is counted at the shape the study
runs it: its rows in batches of ``batch_size``, the prompt lengths of its own set (a few-shot context all
rows share is prefilled once per batch). Each count follows the code that does the work (named in the
comments); the few constants below stand for data-dependent numbers of passes, at their typical values.

The estimate says whether a run takes minutes or hours, not seconds: calibration and the site choice take
a data-dependent number of passes, and answers may stop early at end of turn (the counts assume they never
do, an upper bound).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.datasets import load_dataset
from lensteer.evaluate.capability import load_mc_items, load_paragraphs
from lensteer.locate.probing import ContrastKind, contrast_prompts
from lensteer.steering.prefix import MIN_SHARED_PREFIX
from lensteer.study.coherence import calibration_prompts
from lensteer.study.config import SELECTIVE_METHODS, StudyConfig
from lensteer.study.evaluation import SHARED_CONTEXT_TOKENS, _common_prefix
from lensteer.study.gate import gate_prompt_sets

CALIBRATION_EVALUATIONS = 6  # KL evaluations per calibrated scale (bracket, bisect to 5%): 5-6 in a demo run
SELECTION_EVALUATIONS = 6  # per site candidate: calibrated to 15% (site_choice.CALIBRATION_TOLERANCE)
FLUENCY_EVALUATIONS = 2  # fluency checks per calibrated steering (coherence.largest_admitted_scale)
# candidates that pass the cheap filters (layer, ablation KL) and are calibrated and scored: 5 of 15 in a demo
# run's refusal, 11 of 33 in a smoke run's three threat models (2026-12-07); the rest fail ablation KL <= 0.1
SCORED_SHARE = 1 / 3
RANDOM_CHECKS = 1  # same-KL random directions the site choice calibrates (selection.choose: 1 to 3)
PATCHING_PASSES = 4  # attribution patching: clean and corrupted forwards, a backward (about two)
MC_OPTION_TOKENS = 8  # a multiple-choice option's tokens, roughly
PARAGRAPH_TOKENS = 150  # a bundled paragraph's tokens, roughly
FOLLOW_UP_TOKENS = 12  # a conversation's follow-up user turn, with its template
MASSIVE_PROMPTS = 24  # layers._norm_prompts: 8 target prompts in context, 8 bare, 8 harmless


@dataclass(frozen=True, kw_only=True)
class Rates:
    """This machine's speed on the model at the study's shapes (:func:`~lensteer.study.plan.probe_rates`)."""

    step_seconds: float  # a decoding step's cost whatever its rows (Python, hooks, the cache's bookkeeping)
    row_seconds: float  # each row's added cost in a decoding step
    forward_tokens_per_s: float  # teacher-forced tokens per second, at the study's batch
    batch: int = 64  # the batch the decode rate was probed at (the study's ``batch_size``)
    context: int = 0  # mean prompt tokens of the probe's rows

    def decode_tokens_per_s(self, rows: int) -> float:
        """Decoded tokens per second with ``rows`` rows in a batch."""
        return rows / (self.step_seconds + rows * self.row_seconds)


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """One stage of one threat model (``shared`` for the sets every threat model uses): its work."""

    where: str
    stage: str
    work: str  # what runs, in words
    decode_tokens: int  # rows x steps decoded
    decode_steps: int  # batches x steps (each step pays the fixed cost once)
    forward_tokens: int  # tokens run teacher-forced (prefills included)

    def seconds(self, rates: Rates) -> float:
        return (
            self.decode_steps * rates.step_seconds
            + self.decode_tokens * rates.row_seconds
            + self.forward_tokens / rates.forward_tokens_per_s
        )


@dataclass
class Tally:
    """Work of one stage as it is counted (a builder: :meth:`stage` freezes it)."""

    batch: int
    decode_tokens: float = 0.0
    decode_steps: float = 0.0
    forward_tokens: float = 0.0

    def forward(self, rows: int | float, length: int | float) -> None:
        """``rows`` sequences of ``length`` tokens run teacher-forced."""
        self.forward_tokens += rows * length

    def generate(self, rows: int, steps: int, prompt: int | float) -> None:
        """One generate call: ``rows`` prompts of ``prompt`` tokens (prefilled), ``steps`` tokens each, in
        batches of :attr:`batch`."""
        if rows <= 0 or steps <= 0:
            return
        self.decode_tokens += rows * steps
        self.decode_steps += math.ceil(rows / self.batch) * steps
        self.forward(rows, prompt)

    def stage(self, where: str, stage: str, work: str) -> StagePlan:
        return StagePlan(
            where=where,
            stage=stage,
            work=work,
            decode_tokens=round(self.decode_tokens),
            decode_steps=round(self.decode_steps),
            forward_tokens=round(self.forward_tokens),
        )


def forced_per_row(length: float, shared: int, rows: int, batch: int) -> float:
    """Tokens a teacher-forced pass runs per row when the ``shared`` prefix every row has (a few-shot context,
    the template's system prompt) runs once per batch (:func:`~lensteer.steering.prefix.teacher_forced_states`)."""
    return length - shared * (1 - 1 / max(min(rows, batch), 1))


def shared_tokens(model: Bridge, prompts: Sequence[Any]) -> int:
    """The prefix every prompt shares, in tokens, if the teacher-forced passes compute it once (0 otherwise:
    shorter than :data:`~lensteer.steering.prefix.MIN_SHARED_PREFIX`)."""
    if len(prompts) < 2:
        return 0
    chats = [ChatPrompt(user=p) if isinstance(p, str) else p for p in prompts]
    shared = _common_prefix(model, chats)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def mean_tokens(model: Bridge, prompts: Sequence[Any]) -> float:
    """Mean tokens of the prompts, chat template included."""
    return sum(tokenize_prompt(model, p).n_tokens for p in prompts) / max(len(prompts), 1)


@dataclass(frozen=True, kw_only=True)
class Shared:
    """The sets every threat model shares, as the study builds them (``evaluation.eval_sets``)."""

    n_calibration: int  # held-apart harmless + borderline prompts (coherence.calibration_prompts)
    l_calibration: float
    n_harmless: int
    l_harmless: float
    n_borderline: int
    l_borderline: float
    n_mc: int
    n_paragraphs: int
    batch: int
    calibration_prefix: int = 0  # the template's system prompt, run once per batch by the KL passes
    harmless_prefix: int = 0

    @property
    def kl_pass(self) -> float:
        """Tokens of one KL evaluation on the calibration set (a steered pass over prompt + continuation)."""
        n = self.n_calibration
        return n * forced_per_row(self.l_calibration, self.calibration_prefix, n, self.batch)

    def harmless_pass(self, rows: int, length: float) -> float:
        """Tokens of one teacher-forced pass over ``rows`` harmless prompts of ``length`` tokens."""
        return rows * forced_per_row(length, self.harmless_prefix, rows, self.batch)

    @classmethod
    def of(cls, model: Bridge, config: StudyConfig) -> "Shared":
        calibration = calibration_prompts(config)
        harmless = load_dataset(threats.HARMLESS_DATASET).test.stratified(config.n_harmless).paired_prompts
        borderline = (
            []
            if config.n_borderline == 0
            else load_dataset("borderline").test.stratified(config.n_borderline).prompts
        )
        return cls(
            n_calibration=len(calibration),
            l_calibration=mean_tokens(model, calibration) + config.kl_tokens,
            n_harmless=len(harmless),
            l_harmless=mean_tokens(model, harmless),
            n_borderline=len(borderline),
            l_borderline=mean_tokens(model, borderline),
            n_mc=len(load_mc_items()[: config.n_mc]) if config.n_mc != 0 else 0,
            n_paragraphs=len(load_paragraphs()[: config.n_paragraphs]) if config.n_paragraphs != 0 else 0,
            batch=config.batch_size,
            calibration_prefix=shared_tokens(model, calibration),
            harmless_prefix=shared_tokens(model, harmless),
        )


def joint_decode(t: Tally, conditions: int, rows: int, steps: int, prompt: tuple[float, bool]) -> None:
    """``conditions`` conditions answering the same ``rows`` prompts (``evaluation._joint``): one stream of
    all their rows, or, where the prompts share a few-shot context (``prompt[1]``), one call per condition
    that prefills the context once per batch. ``prompt[0]``: the tokens prefilled per row."""
    length, per_condition = prompt
    for _ in range(conditions if per_condition else 1):
        t.generate(rows if per_condition else conditions * rows, steps, length)


def sets_stage(shared: Shared, config: StudyConfig) -> StagePlan:
    """``sets``: the calibration set's unsteered continuations and their reference logits
    (``coherence.calibration_set``)."""
    t = Tally(batch=config.batch_size)
    t.generate(shared.n_calibration, config.kl_tokens, shared.l_calibration - config.kl_tokens)
    t.forward(shared.n_calibration, shared.l_calibration)
    return t.stage(
        "shared",
        "sets",
        f"{shared.n_calibration} calibration prompts x {config.kl_tokens} tokens (the KL reference)",
    )


@dataclass(frozen=True, kw_only=True)
class Shapes:
    """One threat model's prompt sets: sizes and mean lengths in tokens, as the study builds them."""

    name: str
    n_eval: int
    l_eval: float  # a test prompt in its misaligning context, teacher-forced
    l_prefill: float  # what decoding prefills per row of the test prompts (a shared context once per batch)
    per_condition: bool  # evaluation._joint decodes condition by condition (a long shared context)
    n_probe: int  # probing prompts per class, training and validation (layers.locate_threat_model)
    l_contrast: float  # a probing contrast prompt (with its written reply, or up to the decision)
    n_select: int  # validation prompts the site's decision shift is read on
    n_post: int  # post-instruction template tokens (the prompt contrast's candidate positions)
    n_fluency: int  # held-apart target prompts of the fluency bound
    l_bare: float  # a conversation's first user turn (the test question without its context)
    n_conversations: int
    gate_rows: int  # prompts the prompt gate reads activations on (0: no gate)
    gate_answers: int  # borderline validation prompts the gate's curve answers unsteered
    answer_log_odds: bool  # the threat model also scores the written answers' log-odds
    shared_context: int = 0  # the test prompts' common prefix, run once per batch by teacher-forced passes
    batch: int = 64

    def forced(self, rows: int, length: float) -> float:
        """Tokens of one teacher-forced pass over ``rows`` prompts in the threat model's context, of
        ``length`` tokens each (the shared context once per batch)."""
        return rows * forced_per_row(length, self.shared_context, rows, self.batch)

    @classmethod
    def of(cls, model: Bridge, threat_model: str, config: StudyConfig) -> "Shapes":
        tm = threats.get(threat_model)
        ds = tm.load()
        evals = ds.test.stratified(config.n_eval).chat_prompts(context=tm.misaligning_context)
        shared = _common_prefix(model, evals) if len(evals) > 1 else 0
        rows = ds.with_responses().fit.stratified(config.n_train)
        kind: ContrastKind = "decision" if tm.decision_contexts is not None else "response"
        pos, neg, _ = contrast_prompts(rows, kind, tm.decision_contexts)
        start, end = tokenize_prompt(model, evals[0]).post_instruction
        gate = _gate_sets(tm, config) if tm.prompt_gate else (0, 0)
        return cls(
            name=threat_model,
            n_eval=len(evals),
            l_eval=mean_tokens(model, evals),
            l_prefill=mean_tokens(model, evals)
            - shared * (1 - 1 / max(min(len(evals), config.batch_size), 1)),
            per_condition=len(evals) > 1 and shared >= SHARED_CONTEXT_TOKENS,
            n_probe=config.n_train + max(8, config.n_train // 3),
            l_contrast=mean_tokens(model, [*pos, *neg]),
            n_select=len(ds.val.stratified(config.n_select)),
            n_post=max(end - start, 1),
            n_fluency=len(ds.held_apart.stratified(config.n_fluency)) if config.n_fluency else 0,
            l_bare=mean_tokens(model, [ChatPrompt(user=p.user) for p in evals]),
            n_conversations=len(ds.test.stratified(config.n_conversations)) if config.n_conversations else 0,
            gate_rows=gate[0],
            gate_answers=gate[1],
            answer_log_odds=tm.answer_log_odds,
            shared_context=shared if shared >= MIN_SHARED_PREFIX else 0,
            batch=config.batch_size,
        )


def _gate_sets(tm: threats.ThreatModel, config: StudyConfig) -> tuple[int, int]:
    """Rows the prompt gate reads (:func:`~lensteer.study.gate.gate_prompt_sets`: refusal's training,
    validation and test prompts with their harmless twins and the borderline sets) and the borderline
    validation prompts it answers."""
    sets = gate_prompt_sets(tm, config)
    read = sum(len(prompts) for name, prompts in sets.items() if not name.startswith("borderline_"))
    return read, len(sets["borderline_val"])


@dataclass(frozen=True, kw_only=True)
class Sites:
    """The layers the locate stage works at: candidates screened, and the layer sweep's others."""

    screened: int  # candidate layers (1 when the config sets the layer); patching's may add to the stride's
    sweep: int


def locate_stage(sh: Shapes, shared: Shared, config: StudyConfig, sites: Sites) -> StagePlan:
    """``locate``: probing, the site choice (patching, candidates calibrated and scored on validation
    prompts, a same-KL random control), the prompt gate, the massive-token rule and the selective fit."""
    t = Tally(batch=config.batch_size)
    t.forward(2 * sh.n_probe, sh.l_contrast)  # probing activations, both classes
    choose = config.layer is None
    n_cands = sites.screened * (min(config.select_positions, sh.n_post) + 2) if choose else 0
    if choose:
        _site_choice(t, sh, shared, config, sites.screened, n_cands)
    if sh.gate_rows:  # one activation pass over the gate's sets, and the borderline curve's answers
        t.forward(sh.gate_rows, shared.l_harmless)
        t.generate(sh.gate_answers, config.max_new_tokens, shared.l_borderline)
    steered = 1 + sites.sweep  # layers steerings are built at
    t.forward(sites.sweep, shared.kl_pass)  # reference norms of the swept layers
    if config.massive_ratio is not None:
        t.forward(steered * MASSIVE_PROMPTS, (sh.l_eval + sh.l_bare + shared.l_harmless) / 3)
    if config.selective_fit == "generated_tokens" and any(m in SELECTIVE_METHODS for m in config.methods):
        t.generate(2 * config.n_train, config.max_new_tokens, sh.l_prefill)  # the model's own answers
        t.forward(steered * 2 * config.n_train, sh.l_eval + config.max_new_tokens)  # their tokens' residuals
    what = (
        f"probing {2 * sh.n_probe} prompts; site choice: {sites.screened} layer(s), {n_cands} candidates "
        f"calibrated and scored on {sh.n_select} validation prompts"
        if choose
        else f"probing {2 * sh.n_probe} prompts at the configured layer"
    )
    return t.stage(sh.name, "locate", what + (", the prompt gate" if sh.gate_rows else ""))


def _site_choice(
    t: Tally, sh: Shapes, shared: Shared, config: StudyConfig, layers: int, n_cands: int
) -> None:
    """The work of ``site_choice.choose_site``: every candidate's ablation KL; the :data:`SCORED_SHARE` of them
    that pass the cheap filters calibrated and scored."""
    n_val_harmless = len(load_dataset(threats.HARMLESS_DATASET).val.stratified(config.n_kl))
    kl_heldout = shared.harmless_pass(n_val_harmless, shared.l_harmless + config.kl_tokens)
    if config.patching_layers:
        t.forward(PATCHING_PASSES * min(16, config.n_train), sh.l_eval)
    t.forward(layers, shared.kl_pass)  # reference norms at each screened layer
    t.forward(2 * config.n_train, sh.l_eval)  # the prompt contrast
    t.generate(n_val_harmless, config.kl_tokens, shared.l_harmless)  # the held-out harmless probe
    t.forward(1, kl_heldout)
    t.forward(n_cands * 2 * n_val_harmless, shared.l_harmless)  # ablation KL: base and ablated
    scored = max(1, round(SCORED_SHARE * n_cands))
    for _ in range(1 + scored):  # the unsteered decision and trait, then each scored candidate's
        t.forward(1, sh.forced(sh.n_select, sh.l_eval))
        t.generate(sh.n_select, config.select_new_tokens, sh.l_prefill)
    t.forward(scored * SELECTION_EVALUATIONS, shared.kl_pass)
    t.forward(scored, kl_heldout)
    t.forward(RANDOM_CHECKS * SELECTION_EVALUATIONS, shared.kl_pass)
    t.forward(RANDOM_CHECKS, sh.forced(sh.n_select, sh.l_eval))


def calibrate_stage(sh: Shapes, shared: Shared, config: StudyConfig, calibrated: int) -> StagePlan:
    """``calibrate``: the fluency probe's unsteered answers, then each steering's KL calibration on the
    calibration set and its fluency checks (``coherence.calibrate_coherent``)."""
    t = Tally(batch=config.batch_size)
    new = config.max_new_tokens
    for _ in range(1 + (FLUENCY_EVALUATIONS * calibrated if sh.n_fluency else 0)):
        t.generate(sh.n_fluency, new, sh.l_prefill)
        t.forward(1, sh.forced(sh.n_fluency, sh.l_eval + new))  # perplexity under the unsteered model
    t.forward(calibrated * CALIBRATION_EVALUATIONS, shared.kl_pass)
    return t.stage(
        sh.name,
        "calibrate",
        f"{calibrated} steerings: KL on {shared.n_calibration} prompts, fluency on {sh.n_fluency}",
    )


@dataclass(frozen=True, kw_only=True)
class Block:
    """A block of conditions evaluated together (``runner.CONDITIONS_PER_BLOCK``)."""

    conditions: int
    steered: int
    gated: int  # calibrated methods with a gate (their ungated twins are scored too)
    cached: int  # conditions whose capability an earlier threat model measured (the unsteered baseline)


def decode_stage(sh: Shapes, shared: Shared, config: StudyConfig, blocks: Sequence[Block]) -> StagePlan:
    """``decode``: every block's answers to the test, held-out harmless and borderline prompts."""
    t = Tally(batch=config.batch_size)
    new = config.max_new_tokens
    for b in blocks:
        joint_decode(t, b.conditions, sh.n_eval, new, (sh.l_prefill, sh.per_condition))
        joint_decode(t, b.conditions, shared.n_harmless, new, (shared.l_harmless, False))
        joint_decode(t, b.conditions, shared.n_borderline, new, (shared.l_borderline, False))
    n = sum(b.conditions for b in blocks)
    answers = sh.n_eval + shared.n_harmless + shared.n_borderline
    return t.stage(sh.name, "decode", f"{n} conditions x {answers} prompts x {new} tokens")


def score_stage(
    sh: Shapes, shared: Shared, config: StudyConfig, blocks: Sequence[Block], *, first: bool
) -> StagePlan:
    """``score``: held-out KL (one unsteered pass per block), ungated twins, per condition the perplexities,
    rollout and calibration KL, capability; ``first``: the study's first threat model also builds the
    unsteered held-out reference (``evaluation._unsteered_reference``)."""
    t = Tally(batch=config.batch_size)
    new, kl = config.max_new_tokens, config.kl_tokens
    heldout = shared.harmless_pass(shared.n_harmless, shared.l_harmless + kl)
    capability = shared.n_mc * (sh.l_bare + 4 * MC_OPTION_TOKENS) + shared.n_paragraphs * PARAGRAPH_TOKENS
    if first:
        t.generate(shared.n_harmless, kl, shared.l_harmless)
        t.forward(1, shared.n_paragraphs * PARAGRAPH_TOKENS)
    for b in blocks:
        t.forward(1 + b.steered, heldout)
        if b.gated:
            joint_decode(t, b.gated, sh.n_eval, new, (sh.l_prefill, sh.per_condition))
            t.forward(1 + b.gated, heldout)
        # one unsteered pass over each set of answers gives the perplexities (study.answer_scores) ...
        per_condition = shared.harmless_pass(shared.n_harmless, shared.l_harmless + new)
        per_condition += sh.forced(sh.n_eval, sh.l_eval + new)
        # the answer log-odds: one pass over the stems where the written answers part (decision_log_odds)
        per_condition += sh.forced(sh.n_eval, sh.l_eval) if sh.answer_log_odds else 0
        t.forward(b.conditions, per_condition)
        # ... and a steered one beside it the rollout KL; then the calibration KL
        t.forward(b.steered, sh.forced(sh.n_eval, sh.l_eval + new) + shared.kl_pass)
        t.forward(b.conditions - b.cached, capability)
    return t.stage(
        sh.name,
        "score",
        f"KL (held-out, rollout, calibration), perplexity, {shared.n_mc} MC items, {shared.n_paragraphs} paragraphs",
    )


def conversations_stage(sh: Shapes, config: StudyConfig, evaluated: int) -> StagePlan:
    """``conversations``: every condition's conversations, all advancing together a turn at a time."""
    t = Tally(batch=config.batch_size)
    rows = evaluated * sh.n_conversations
    for turn in range(config.n_turns):
        t.generate(rows, config.max_new_tokens, sh.l_bare + turn * (config.max_new_tokens + FOLLOW_UP_TOKENS))
    return t.stage(sh.name, "conversations", f"{rows} conversations of {config.n_turns} turns")


def robustness_stage(sh: Shapes, config: StudyConfig, settings: Sequence[str]) -> StagePlan:
    """``robustness``: each setting's unsteered and steered answers to the test prompts (coarse: an
    organism setting also trains or loads the organism and calibrates its own steerings)."""
    t = Tally(batch=config.batch_size)
    conditions = 1 + len(config.robustness_methods)
    for _ in settings:
        t.generate(conditions * sh.n_eval, config.max_new_tokens, sh.l_prefill)
    return t.stage(sh.name, "robustness", f"{len(settings)} setting(s) x {conditions} conditions")
