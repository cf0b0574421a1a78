"""The prompts stage: scenarios (YAML in ``prompts/``) and KAR's factorised prompts."""

from kar.prompts.builders import build_item_prompts, build_user_prompts
from kar.prompts.sanitize import clean_text, quote, quote_data
from kar.prompts.scenario import (
    PROMPT_FORMAT_VERSION,
    GenerationLimits,
    Scenario,
    list_scenarios,
    scenario_dirs,
)

__all__ = [
    "PROMPT_FORMAT_VERSION",
    "GenerationLimits",
    "Scenario",
    "build_item_prompts",
    "build_user_prompts",
    "clean_text",
    "list_scenarios",
    "quote",
    "quote_data",
    "scenario_dirs",
]
