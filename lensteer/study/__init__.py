"""study: the whole experiment, composed from the stages below. Owns the config, the resumable
results table, layer selection (``recommend_site``), building the study's steerings, evaluating a
condition, planning the conditions, the runner, the run folder, the typed records and the report. Each
module one job; imports anything below ``plotting``.
"""

from lensteer.study.coherence import build_steering
from lensteer.study.config import METHODS, StudyConfig
from lensteer.study.evaluation import eval_prompts, evaluate_steering
from lensteer.study.folder import RunFolder
from lensteer.study.plan import PlannedCondition, plan_conditions
from lensteer.study.recommend import SiteRecommendation, recommend_site
from lensteer.study.records import ConditionResult, StudyReport
from lensteer.study.report import build_report, headline_table, regimes_table, robustness_table
from lensteer.study.runner import StudyResult, rebuild_report, run_study
from lensteer.study.table import SweepTable

__all__ = [
    "METHODS",
    "ConditionResult",
    "PlannedCondition",
    "RunFolder",
    "SiteRecommendation",
    "StudyConfig",
    "StudyReport",
    "StudyResult",
    "SweepTable",
    "build_report",
    "build_steering",
    "eval_prompts",
    "evaluate_steering",
    "headline_table",
    "plan_conditions",
    "rebuild_report",
    "recommend_site",
    "regimes_table",
    "robustness_table",
    "run_study",
]
