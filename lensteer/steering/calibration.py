"""Coherence-aware strength: reference residual norms, steering KL, and calibration to a KL budget.

Strength is not guessed. :func:`reference_norm` measures the residual norm a relative scale refers
to; :func:`steering_kl` measures the coherence cost of a steering as the mean per-token
``KL(p_unsteered || p_steered)`` of next-token distributions on harmless prompts, at the positions
that choose the tokens of a reference continuation (teacher-forced); :func:`calibrate` finds by
bisection the scale whose KL matches a budget (e.g. 0.1, 0.3 or 1.0 nats), per method and layer.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import (
    ChatPrompt,
    TokenizedPrompt,
    length_sorted_batches,
    pad_id_of,
    tokenize_prompt,
)
from lensteer.core.forward import kl_divergence, unembed
from lensteer.core.plain import plain_view
from lensteer.core.sites import resolve_sites
from lensteer.errors import ConfigError, DataError
from lensteer.steering.gates import gate_rows
from lensteer.steering.generation import generate
from lensteer.steering.hooks import SteeringContext
from lensteer.steering.positions import position_mask
from lensteer.steering.prefix import teacher_forced_states
from lensteer.steering.spec import Steering


def reference_norm(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    layer: int,
    *,
    site: str = "resid_post",
    batch_size: int = 16,
    chat: bool = True,
) -> float:
    """Mean L2 norm of the residual at ``layer``/``site`` over the prompts' tokens.

    The first token of each prompt is left out: it is an attention sink whose residual norm is
    tens of times larger than any other token's on most models, and would dominate the mean.
    """
    if isinstance(prompts, str) or not prompts:
        raise DataError("reference_norm needs a non-empty list of prompts")
    (site_obj,) = resolve_sites(model, [layer], site)
    tokenized = [tokenize_prompt(model, p, chat=chat) for p in prompts]
    total, count = 0.0, 0
    device = next(iter(model.parameters())).device
    stop_at = site_obj.layer + 1 if site_obj.layer + 1 < int(model.cfg.n_layers) else None
    for rows, batch in length_sorted_batches(tokenized, batch_size, pad_id_of(model)):
        keep = batch.attention_mask.bool().clone()
        first = keep.float().argmax(-1)
        keep[torch.arange(len(rows)), first] = False
        norms: list[torch.Tensor] = []

        def hook(resid: torch.Tensor, hook: Any, norms: list[torch.Tensor] = norms) -> torch.Tensor:  # noqa: ARG001
            norms.append(resid.float().norm(dim=-1).cpu())
            return resid

        with torch.inference_mode(), model.hooks(fwd_hooks=[(site_obj.name, hook)]):
            model(
                batch.tokens.to(device), attention_mask=batch.attention_mask.to(device), stop_at_layer=stop_at
            )
        total += float(norms[0][keep].sum())
        count += int(keep.sum())
    if count == 0:
        raise DataError("the prompts have no token after the first; use longer prompts")
    return total / count


@dataclass(frozen=True, kw_only=True, eq=False)
class _KLBatch:
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lens: torch.Tensor
    pads: torch.Tensor
    mask: torch.Tensor  # [batch, pos] positions that chose a continuation token
    base_logprobs: torch.Tensor  # [n_masked, d_vocab] float64


@dataclass(frozen=True, kw_only=True, eq=False)
class KLProbe:
    """A fixed calibration set: harmless prompts with reference continuations, and the unsteered
    next-token log-probabilities at the positions that chose those continuations.

    Build it once with :func:`kl_probe`; every :func:`steering_kl` call reuses it.
    """

    batches: tuple[_KLBatch, ...]
    n_positions: int


def _continuation_batches(
    model: Bridge,
    prompts: Sequence[torch.Tensor],
    continuations: Sequence[torch.Tensor],
    batch_size: int,
) -> Iterator[tuple[list[int], Any, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Teacher-forcing batches of prompt + continuation: ``(rows, batch, prompt_lens, pads, mask)``, where
    ``mask`` marks the positions that chose a continuation token (the last prompt token up to the
    last-but-one token). Rows without a continuation are left out."""
    full = [
        TokenizedPrompt(
            tokens=torch.cat([p, c]), instruction=(0, 0), post_instruction=(0, 0), response=(0, 0)
        )
        for p, c in zip(prompts, continuations, strict=True)
    ]
    kept = [i for i, c in enumerate(continuations) if len(c) > 0]
    for rows, batch in length_sorted_batches([full[i] for i in kept], batch_size, pad_id_of(model)):
        rows = [kept[r] for r in rows]
        width = batch.tokens.shape[1]
        prompt_lens = torch.tensor([len(prompts[i]) for i in rows])
        lens = torch.tensor([full[i].n_tokens for i in rows])
        pads = width - lens
        t = torch.arange(width)[None, :] - pads[:, None]
        mask = (t >= prompt_lens[:, None] - 1) & (t < lens[:, None] - 1)
        yield rows, batch, prompt_lens, pads, mask


def kl_probe(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    *,
    continuation_tokens: int = 24,
    batch_size: int = 8,
    chat: bool = True,
) -> KLProbe:
    """Generate unsteered greedy continuations and store the base log-probs where they were chosen."""
    if isinstance(prompts, str) or not prompts:
        raise DataError("the KL calibration set needs a non-empty list of harmless prompts")
    if continuation_tokens < 1:
        raise ConfigError(f"continuation_tokens must be >= 1, got {continuation_tokens}")
    gens = generate(model, prompts, max_new_tokens=continuation_tokens, batch_size=batch_size, chat=chat)
    device = next(iter(model.parameters())).device
    batches: list[_KLBatch] = []
    n_positions = 0
    view = plain_view(model)
    for _, batch, prompt_lens, pads, mask in _continuation_batches(
        model, gens.prompt_tokens, gens.tokens, batch_size
    ):
        ctx = SteeringContext(prompt_lens=prompt_lens, pads=pads, record=False)
        with torch.inference_mode():
            states = teacher_forced_states(
                model, (), batch.tokens.to(device), batch.attention_mask.to(device), mask, ctx, view=view
            )
            base = torch.log_softmax(unembed(model, states).double(), -1).cpu()
        batches.append(
            _KLBatch(
                tokens=batch.tokens,
                attention_mask=batch.attention_mask,
                prompt_lens=prompt_lens,
                pads=pads,
                mask=mask,
                base_logprobs=base,
            )
        )
        n_positions += int(mask.sum())
    if n_positions == 0:
        raise DataError(
            "no continuation tokens were generated (every prompt ended at once); use other prompts"
        )
    return KLProbe(batches=tuple(batches), n_positions=n_positions)


def probe_gate_rows(
    model: Bridge, steerings: Sequence[Steering], probe: KLProbe
) -> tuple[torch.Tensor | None, ...]:
    """Per batch of ``probe``, which rows each steering's gate lets through (``[n_steerings, batch]`` bool;
    ``None`` for a batch when no steering has a gate): the prompts' own pass, as in :func:`lensteer.generate`.
    A gate does not depend on the scale, so :func:`calibrate` decides it once for every scale it tries."""
    if all(s.gate is None for s in steerings):
        return tuple(None for _ in probe.batches)
    out: list[torch.Tensor | None] = []
    for b in probe.batches:
        prompts = [
            TokenizedPrompt(
                tokens=b.tokens[i, int(b.pads[i]) : int(b.pads[i]) + int(b.prompt_lens[i])],
                instruction=(0, 0),
                post_instruction=(0, 0),
                response=(0, 0),
            )
            for i in range(b.tokens.shape[0])
        ]
        out.append(torch.stack([gate_rows(model, [s.gate], prompts) for s in steerings]))
    return tuple(out)


def steering_kl(
    model: Bridge,
    steering: "Steering | Sequence[Steering]",
    probe: KLProbe,
    *,
    gated: bool = True,
    open_rows: Sequence[torch.Tensor | None] | None = None,
) -> float:
    """Mean per-token ``KL(p_unsteered || p_steered)`` in nats over the probe's continuation positions.

    With ``gated`` (the default) each steering's gate decides per prompt whether it acts, as deployed
    (a closed gate costs 0 there); ``gated=False`` measures the edit wherever it could act. ``open_rows``:
    the gates' decisions from :func:`probe_gate_rows`, when the caller already has them."""
    steerings = (steering,) if isinstance(steering, Steering) else tuple(steering)
    if not steerings or not all(isinstance(s, Steering) for s in steerings):
        raise ConfigError(f"steering_kl takes a Steering or a non-empty list of them, got {steering!r}")
    if not gated:
        rows: Sequence[torch.Tensor | None] = tuple(None for _ in probe.batches)
    else:
        rows = open_rows if open_rows is not None else probe_gate_rows(model, steerings, probe)
    device = next(iter(model.parameters())).device
    view = plain_view(model)
    total = 0.0
    for b, opened in zip(probe.batches, rows, strict=True):
        ctx = SteeringContext(prompt_lens=b.prompt_lens, pads=b.pads, record=False, rows=opened)
        with torch.inference_mode():
            states = teacher_forced_states(
                model, steerings, b.tokens.to(device), b.attention_mask.to(device), b.mask, ctx, view=view
            )
            steered = torch.log_softmax(unembed(model, states).double(), -1).cpu()
        total += float(kl_divergence(b.base_logprobs, steered).sum())
    return total / probe.n_positions


def sequence_kl(
    model: Bridge,
    steering: Steering,
    prompts: Sequence[torch.Tensor],
    continuations: Sequence[torch.Tensor],
    *,
    gated: bool = True,
    batch_size: int = 16,
) -> float:
    """Mean per-token ``KL(p_unsteered || p_steered)`` along given continuations (teacher-forced).

    The coherence cost of a steering on text it did not calibrate on: held-out harmless prompts with
    their unsteered continuations, or its own steered rollouts of the evaluation prompts. With
    ``gated`` the steering's gate decides per prompt whether it acts (a closed gate costs 0 there),
    as in :func:`lensteer.generate`. Nothing of the vocabulary-sized distributions is stored.
    Several steerings on the same text: :func:`sequence_kls` (one unsteered pass for all).

    Args:
        prompts: Prompt token ids (1-D each), e.g. :attr:`Generations.prompt_tokens`.
        continuations: The tokens that followed each prompt (1-D each); empty ones are skipped.
    """
    return sequence_kls(model, [steering], prompts, continuations, gated=gated, batch_size=batch_size)[0]


def sequence_kls(
    model: Bridge,
    steerings: Sequence[Steering],
    prompts: Sequence[torch.Tensor],
    continuations: Sequence[torch.Tensor],
    *,
    gated: bool = True,
    batch_size: int = 16,
) -> list[float]:
    """:func:`sequence_kl` of each of ``steerings`` (each alone, not composed) on the same continuations,
    with the unsteered forward pass run once per batch for all of them."""
    if not steerings:
        raise DataError("sequence_kls needs at least one steering")
    scores = sequence_scores(model, steerings, prompts, continuations, gated=gated, batch_size=batch_size)
    return list(scores.kls)


@dataclass(frozen=True, kw_only=True, eq=False)
class SequenceScores:
    """What one teacher-forced pass along continuations yields.

    Attributes:
        kls: Per steering, the mean per-token ``KL(p_unsteered || p_steered)`` (as :func:`sequence_kls`).
        logprobs: Per row, the unsteered log-probability of each continuation token (float64; empty where
            the continuation is): a perplexity under the unsteered model without another pass.
        kl_by_prompt: Per steering, each prompt's mean per-token KL along its continuation (float64;
            NaN where the continuation is empty): which prompts a steering disturbs, and ``kls`` again as
            the mean weighted by ``positions``.
        positions: Per prompt, how many continuation positions its KL averages (0: an empty one).
    """

    kls: tuple[float, ...]
    logprobs: tuple[torch.Tensor, ...]
    kl_by_prompt: tuple[Float[torch.Tensor, " n_prompts"], ...]
    positions: Int[torch.Tensor, " n_prompts"]


def sequence_scores(
    model: Bridge,
    steerings: Sequence[Steering],
    prompts: Sequence[torch.Tensor],
    continuations: Sequence[torch.Tensor],
    *,
    gated: bool = True,
    batch_size: int = 16,
) -> SequenceScores:
    """One unsteered teacher-forced pass along ``continuations`` (per batch) and one per steering: each
    steering's KL (:func:`sequence_kls`; none asked: the unsteered pass alone) and every continuation
    token's unsteered log-probability, read off the same unsteered pass."""
    if len(prompts) != len(continuations) or not prompts:
        raise DataError(
            f"sequence_kl needs as many continuations as prompts (> 0), got {len(prompts)} and "
            f"{len(continuations)}"
        )
    open_rows: list[torch.Tensor | None] = [None] * len(steerings)
    if gated and any(s.gate is not None for s in steerings):
        tokenized = [
            TokenizedPrompt(tokens=p, instruction=(0, 0), post_instruction=(0, 0), response=(0, 0))
            for p in prompts
        ]
        open_rows = [None if s.gate is None else gate_rows(model, [s.gate], tokenized) for s in steerings]
    device = next(iter(model.parameters())).device
    view = plain_view(model)
    totals, n_positions = [0.0] * len(steerings), 0
    logprobs = [torch.zeros(0, dtype=torch.float64) for _ in prompts]
    row_sums = torch.zeros(len(steerings), len(prompts), dtype=torch.float64)
    positions = torch.zeros(len(prompts), dtype=torch.long)
    for rows, batch, prompt_lens, pads, mask in _continuation_batches(
        model, prompts, continuations, batch_size
    ):
        tokens, attn = batch.tokens.to(device), batch.attention_mask.to(device)
        # logits only where a continuation token was chosen: a long few-shot prompt's other positions
        # would cost most of the unembedding (the largest matmul of a small model) for nothing; the
        # prompts' shared prefix (a few-shot context) runs once per pass (teacher_forced_states)
        with torch.inference_mode():
            plain = SteeringContext(prompt_lens=prompt_lens, pads=pads, record=False)
            base = torch.log_softmax(
                unembed(
                    model, teacher_forced_states(model, (), tokens, attn, mask, plain, view=view)
                ).double(),
                -1,
            )
            chosen = base.gather(-1, tokens[:, 1:][mask[:, :-1].to(device)][:, None])[:, 0].cpu()
            per_row = mask.sum(1).tolist()
            for i, lp in zip(rows, chosen.split(per_row), strict=True):
                logprobs[i] = lp
            positions[rows] = torch.tensor(per_row, dtype=torch.long)
            row_of = torch.repeat_interleave(
                torch.arange(len(rows)), torch.tensor(per_row)
            )  # each position's row
            for k, (s, opened) in enumerate(zip(steerings, open_rows, strict=True)):
                ctx = SteeringContext(
                    prompt_lens=prompt_lens,
                    pads=pads,
                    record=False,
                    rows=None if opened is None else opened[rows],
                )
                steered_in = teacher_forced_states(model, (s,), tokens, attn, mask, ctx, view=view)
                steered = torch.log_softmax(unembed(model, steered_in).double(), -1)
                kl = kl_divergence(base, steered).cpu()
                totals[k] += float(kl.sum())
                row_sums[k, rows] = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, row_of, kl)
        n_positions += int(mask.sum())
    if n_positions == 0 and steerings:
        raise DataError("no continuation token to measure KL on (every continuation is empty)")
    by_prompt = row_sums / positions.double()  # 0 / 0: NaN where a continuation is empty
    return SequenceScores(
        kls=tuple(t / n_positions for t in totals),
        logprobs=tuple(logprobs),
        kl_by_prompt=tuple(by_prompt.unbind(0)) if steerings else (),
        positions=positions,
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class Calibration:
    """The outcome of :func:`calibrate`.

    Attributes:
        steering: The steering at the calibrated scale (``info["calibration"]`` records how).
        scale: The calibrated scale.
        kl: Its measured KL (nats per token).
        target_kl: The budget asked for.
        reached: Whether ``kl`` is within the tolerance of the budget.
        history: Every (scale, KL) evaluated, in order.
    """

    steering: Steering
    scale: float
    kl: float
    target_kl: float
    reached: bool
    history: tuple[tuple[float, float], ...]

    @property
    def relative_error(self) -> float:
        return abs(self.kl - self.target_kl) / self.target_kl


def _max_scale(steering: Steering) -> float:
    return 180.0 if steering.mode == "angular" else math.inf


def _check_positions_reach(steering: Steering, probe: KLProbe) -> None:
    """A :class:`ConfigError` if the steering's positions select no token that can move the probe's KL (none
    at or before a scored position of any row): its KL would be 0 at every scale."""
    lengths = []
    for b in probe.batches:
        sel = position_mask(
            steering.positions,
            prompt_lens=b.prompt_lens,
            pads=b.pads,
            offset=0,
            seq_len=int(b.tokens.shape[1]),
        )
        scored = b.mask.int()
        upto_scored = torch.flip(torch.cummax(torch.flip(scored, [-1]), -1).values, [-1]).bool()
        if bool((sel & upto_scored & b.attention_mask.bool()).any()):
            return
        lengths += (b.attention_mask.sum(-1)).tolist()
    raise ConfigError(
        f"steering positions {steering.positions!r} select no token of the calibration prompts "
        f"({min(lengths)}-{max(lengths)} tokens with their continuations), so no scale changes the "
        "KL; use positions inside the prompts (e.g. 'all', LastK(k) or a window that starts earlier)"
    )


def calibrate(
    model: Bridge,
    steering: Steering,
    probe: KLProbe,
    target_kl: float,
    *,
    tolerance: float = 0.05,
    start: float | None = None,
    max_evals: int = 24,
    progress: bool = False,
) -> Calibration:
    """Find the scale at which ``steering`` costs ``target_kl`` nats per token, by bisection.

    The cost is measured as deployed: the steering's gate, if it has one, decides per prompt whether it
    acts (:func:`steering_kl`), so a gate that stays closed on the probe's prompts spares them (to price
    the bare edit, calibrate ``replace(steering, gate=None)``).
    The probe should hold prompts whose answers must not change (harmless, borderline): pricing the edit on
    the prompts it is meant to change would shrink the scale the better the direction works.

    KL grows with the scale (for every mode, from 0 at scale 0), so the scale is bracketed by
    doubling from ``start`` and then bisected until the KL is within ``tolerance`` (relative) of
    the budget. The KL may saturate below the budget (selective modes stop firing; normalisation
    after the site bounds the effect of any single direction): doubling stops when a doubling adds
    less than 2%, and the closest KL is returned with ``reached=False``.

    Args:
        model: The model.
        steering: The steering to calibrate (its scale is the starting point unless ``start``).
        probe: The calibration set from :func:`kl_probe` (harmless prompts).
        target_kl: Budget in nats per token, > 0.
        tolerance: Accepted relative error of the KL (0.05: within 5%).
        start: First scale to try (default: the steering's scale, or 1).
        max_evals: At most this many KL evaluations.
        progress: Show a progress bar.
    """
    if not (isinstance(target_kl, (int, float)) and math.isfinite(target_kl) and target_kl > 0):
        raise ConfigError(f"target_kl must be a finite number of nats > 0, got {target_kl!r}")
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance is relative, in (0, 1); got {tolerance}")
    if steering.mode == "ace":
        raise ConfigError(
            "mode 'ace' changes activations even at scale 0 (it moves the projection to the "
            "reference); calibrate its reference instead, or use add/swfc/ablate/angular/sttp/stmp"
        )
    _check_positions_reach(steering, probe)
    opened = probe_gate_rows(model, [steering], probe)
    history: list[tuple[float, float]] = []
    bar = tqdm(total=max_evals, desc=f"calibrate {steering.mode} to KL {target_kl:g}", disable=not progress)

    def kl_at(scale: float) -> float:
        value = steering_kl(model, steering.with_scale(scale), probe, open_rows=opened)
        history.append((scale, value))
        bar.update(1)
        return value

    cap = _max_scale(steering)
    lo, lo_kl = 0.0, 0.0
    hi = min(abs(start if start is not None else (steering.scale or 1.0)) or 1.0, cap)
    hi_kl = kl_at(hi)
    while hi_kl < target_kl and len(history) < max_evals and hi < cap:
        prev_kl = hi_kl
        lo, lo_kl = hi, hi_kl
        hi = min(hi * 2.0, cap)
        hi_kl = kl_at(hi)
        if hi_kl < target_kl and hi_kl <= 1.02 * prev_kl:
            break  # saturated: normalisation downstream bounds the KL (or a selective mode stopped firing)
    best = min(history, key=lambda h: abs(h[1] - target_kl))
    while (
        abs(best[1] - target_kl) > tolerance * target_kl and hi_kl >= target_kl and len(history) < max_evals
    ):
        # interpolate in sqrt(KL) (KL ~ scale^2 for small edits), safeguarded into the middle of the bracket
        a, b = math.sqrt(lo_kl), math.sqrt(hi_kl)
        guess = lo + (hi - lo) * (math.sqrt(target_kl) - a) / max(b - a, 1e-12)
        mid = min(max(guess, lo + 0.1 * (hi - lo)), hi - 0.1 * (hi - lo))
        mid_kl = kl_at(mid)
        if mid_kl < target_kl:
            lo, lo_kl = mid, mid_kl
        else:
            hi, hi_kl = mid, mid_kl
        best = min(history, key=lambda h: abs(h[1] - target_kl))
    bar.close()
    scale, kl = best
    reached = abs(kl - target_kl) <= tolerance * target_kl
    info = dict(
        steering.info,
        calibration={
            "target_kl": target_kl,
            "kl": kl,
            "reached": reached,
            "evaluations": len(history),
            "n_positions": probe.n_positions,
            "gated": steering.gate is not None,
        },
    )
    return Calibration(
        steering=replace(steering.with_scale(scale), info=info),
        scale=scale,
        kl=kl,
        target_kl=target_kl,
        reached=reached,
        history=tuple(history),
    )
