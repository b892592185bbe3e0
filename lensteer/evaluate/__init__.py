"""evaluate: how good a steered model is. Owns the metrics (perplexity, over-refusal), repetition,
multiple-choice capability, inducer effects, the trait scorers (refusal, honesty, compassion), judges, steerability,
the first-token decision and side-by-side comparison. Imports ``core``, ``locate`` and ``steering``.
"""

from lensteer.evaluate.capability import MCItem, MCResult, load_mc_items, mc_accuracy
from lensteer.evaluate.compare import SideBySide, side_by_side
from lensteer.evaluate.compassion import (
    CompassionScorer,
    compassion_scorer,
    train_compassion_scorer,
)
from lensteer.evaluate.decision import opening_log_odds
from lensteer.evaluate.honesty import HonestyVerdict, honesty_verdict
from lensteer.evaluate.inducers import InducerEffect, inducer_effect, reply_logprob
from lensteer.evaluate.judges import CallableJudge, HttpJudge, Judge, judge_responses
from lensteer.evaluate.metrics import Perplexity, over_refusal_rate, response_perplexity
from lensteer.evaluate.refusal import (
    RefusalVerdict,
    is_redirecting_refusal,
    is_refusal,
    refusal_verdict,
)
from lensteer.evaluate.repetition import (
    RepetitionReport,
    TurnRepetition,
    conversation_repetition,
    distinct_n,
    rep_n,
    repetition_report,
)
from lensteer.evaluate.steerability import (
    Steerability,
    decision_log_odds,
    layer_steerability,
    preference_margin,
    steering_effect,
)

__all__ = [
    "CallableJudge",
    "CompassionScorer",
    "HonestyVerdict",
    "HttpJudge",
    "InducerEffect",
    "Judge",
    "MCItem",
    "MCResult",
    "Perplexity",
    "RefusalVerdict",
    "RepetitionReport",
    "SideBySide",
    "Steerability",
    "TurnRepetition",
    "compassion_scorer",
    "conversation_repetition",
    "decision_log_odds",
    "distinct_n",
    "honesty_verdict",
    "inducer_effect",
    "is_redirecting_refusal",
    "is_refusal",
    "judge_responses",
    "layer_steerability",
    "load_mc_items",
    "mc_accuracy",
    "opening_log_odds",
    "over_refusal_rate",
    "preference_margin",
    "refusal_verdict",
    "rep_n",
    "repetition_report",
    "reply_logprob",
    "response_perplexity",
    "side_by_side",
    "steering_effect",
    "train_compassion_scorer",
]
