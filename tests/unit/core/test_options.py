"""Keyword options become one frozen settings value: unknown names and values outside a Literal are refused."""

from dataclasses import dataclass, fields
from typing import Literal

import pytest

import lensteer
from lensteer.core.options import settings_from
from lensteer.evaluate.steerability import SteerabilityOptions, SteerabilitySettings
from lensteer.locate.candidates import CandidateOptions, CandidateReading
from lensteer.locate.direction_patching import DirectionPatchOptions, DirectionPatchSettings
from lensteer.locate.directions import ProbeFitOptions, ProbeFitSettings
from lensteer.locate.patching import PatchOptions, PatchSettings
from lensteer.locate.probing import ProbingOptions, ProbingSettings
from lensteer.steering.gate_search import GateReading, GateReadOptions
from lensteer.steering.generation import Decoding, GenerateOptions
from lensteer.steering.sampling import Sampling
from lensteer.steering.token_fit import AnswerDecoding, AnswerOptions


@dataclass(frozen=True, kw_only=True)
class _Demo:
    mode: Literal["a", "b"] = "a"
    size: int = 1


def test_settings_take_the_options_given_and_defaults_for_the_rest():
    assert settings_from(_Demo, {"size": 3}, what="demo") == _Demo(mode="a", size=3)


def test_an_unknown_option_is_refused_by_name_with_the_allowed_ones():
    with pytest.raises(
        lensteer.ConfigError, match=r"unknown demo options \['sise'\]; allowed: \['mode', 'size'\]"
    ):
        settings_from(_Demo, {"sise": 3}, what="demo")


def test_a_value_outside_a_literal_is_refused_with_the_choices():
    with pytest.raises(lensteer.ConfigError, match=r"mode must be 'a' or 'b', got 'c'"):
        settings_from(_Demo, {"mode": "c"}, what="demo")


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        (PatchOptions, [PatchSettings]),
        (ProbingOptions, [ProbingSettings]),
        (ProbeFitOptions, [ProbeFitSettings]),
        (DirectionPatchOptions, [DirectionPatchSettings]),
        (CandidateOptions, [CandidateReading]),
        (SteerabilityOptions, [SteerabilitySettings]),
        (GateReadOptions, [GateReading]),
        (AnswerOptions, [AnswerDecoding]),
        (GenerateOptions, [Decoding, Sampling]),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_each_options_dict_names_exactly_its_settings_fields(options, settings):
    names = [f.name for cls in settings for f in fields(cls)]
    assert sorted(options.__annotations__) == sorted(names) and len(names) == len(set(names))
