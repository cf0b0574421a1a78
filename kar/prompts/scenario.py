"""Scenarios: a YAML file in ``prompts/`` holding KAR's factorised questions for one domain."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from kar.errors import ConfigError
from kar.prompts.builders import sample_item_vars, sample_user_vars
from kar.prompts.collective import sample_collective_vars
from kar.records import KIND_ITEM, KIND_USER, SamplingParams, stable_hash
from kar.resources import bundled_dir

# Bump when the builders change how they format what templates receive (history lines,
# quoting): part of every scenario's version, so old knowledge is not mistaken for new.
PROMPT_FORMAT_VERSION = 1

# Sandboxed: templates see only the variables passed in, cannot reach Python internals
# (``''.__class__`` raises SecurityError) nor mutate them; a missing variable is an error.
_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
)

_TEMPLATE_FIELDS = ("system_prompt", "user_template", "item_template")


class GenerationLimits(BaseModel):
    """Token budgets for the LLM answers (KAR keeps them short)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_max_new_tokens: int = Field(192, ge=1, le=8192)
    item_max_new_tokens: int = Field(128, ge=1, le=8192)


def _check_syntax(template: str) -> str:
    """The template unchanged, or ValueError naming the line of a Jinja2 syntax error."""
    try:
        _ENV.parse(template)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    return template


class CollectiveTemplates(BaseModel):
    """REKI-style collective questions: one per cluster of users or of items.

    collective_user: ``item_noun, factors, n_members, history`` (list of {title, year,
    watched, liked, line}), ``history_text``; collective_item: ``item_noun, factors,
    n_members, members`` (list of {title, year, line}), ``members_text``, ``genres_text``.
    Not part of :attr:`Scenario.version` (individual prompts are unchanged by them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_template: str = Field(
        "These users, judging by what they watched together ({{ n_members }} users; the "
        "{{ item_noun }}s most of them rated):\n{{ history_text }}\nWhat do these users have "
        "in common? Analyze their shared preferences for {{ item_noun }}s, considering "
        'factors such as {{ factors | join(", ") }}. Answer in at most three sentences.',
        min_length=1,
    )
    item_template: str = Field(
        "These {{ item_noun }}s are liked by the same people ({{ n_members }} in the group, "
        "e.g.):\n{{ members_text }}\nThese {{ item_noun }}s have in common ... Describe what "
        'they share, including {{ factors | join(", ") }}. Answer in at most three sentences.',
        min_length=1,
    )
    members_shown: int = Field(10, ge=1, le=200)  # list lines rendered per cluster

    @field_validator("user_template", "item_template")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_syntax(value)


class Scenario(BaseModel):
    """A domain's factorised prompts: factors, system prompt, user and item templates.

    Template variables (every text value is already cleaned and double-quoted):
    user_template: ``item_noun, factors, history`` (list of {title, year, rating, liked,
    line}), ``history_text``, ``n_history``, ``profile``, ``user`` (attribute -> value);
    item_template: ``item_noun, factors, title, year, genres`` (list), ``genres_text``,
    ``creator``, ``attributes``, ``texts`` (item_text_columns -> quoted passage) and
    ``item_text`` (them as ``column: "..."`` lines; empty when none).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    item_noun: str = Field(min_length=1)
    description: str = ""
    user_factors: list[str] = Field(min_length=1)
    item_factors: list[str] = Field(min_length=1)
    system_prompt: str = Field(min_length=1)
    user_template: str = Field(min_length=1)
    item_template: str = Field(min_length=1)
    history_length: int = Field(15, ge=1, le=500)
    title_max_chars: int = Field(120, ge=8, le=2000)
    text_max_chars: int = Field(80, ge=8, le=2000)  # creators, genres, attributes
    rating_max: float | None = Field(5.0, gt=0)
    user_attributes: list[str] = Field(default_factory=list)  # users columns in the profile
    # items columns of free text (description, tags, ...) quoted into the item question as
    # grounding data (variables ``texts`` / ``item_text``); absent columns are skipped
    item_text_columns: list[str] = Field(default_factory=list)
    item_text_max_chars: int = Field(400, ge=16, le=8000)
    empty_history_text: str = "No history yet."
    generation: GenerationLimits = Field(default_factory=GenerationLimits)
    # collective (cluster) questions; None: the generic defaults of CollectiveTemplates
    collective: CollectiveTemplates | None = None
    source: Path | None = Field(None, exclude=True)

    _templates: dict[str, Template] = PrivateAttr(default_factory=dict)

    @field_validator(*_TEMPLATE_FIELDS)
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _check_syntax(value)

    @field_validator("user_factors", "item_factors")
    @classmethod
    def _factors_clean(cls, value: list[str]) -> list[str]:
        cleaned = [f.strip() for f in value]
        if any(not f for f in cleaned):
            raise ValueError("factors must be non-empty strings")
        return cleaned

    def model_post_init(self, __context: Any) -> None:
        self._templates = {f: _ENV.from_string(getattr(self, f)) for f in _TEMPLATE_FIELDS}

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls, name_or_path: str | Path, search_dirs: list[str | Path] | None = None
    ) -> Scenario:
        """Load a scenario from a YAML path, or by bare name from ``search_dirs`` then the
        bundled ``prompts/`` folder. Invalid files raise ConfigError naming file and field."""
        path = _resolve(name_or_path, search_dirs)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read scenario file: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a scenario must be a YAML mapping of fields")
        raw.setdefault("name", path.stem)
        try:
            scenario = cls.model_validate({**raw, "source": path})
        except ValidationError as exc:
            problems = "; ".join(
                f"field {'.'.join(str(p) for p in err['loc']) or '?'!r}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"{path}: {problems}") from exc
        scenario.check()
        return scenario

    def check(self) -> None:
        """Render every template with sample values: catches undefined variables and
        sandbox violations at load time rather than mid-run."""
        self.render_system()
        self.render_user(sample_user_vars(self))
        self.render_item(sample_item_vars(self))
        if self.collective is not None:
            for entity_type in ("user", "item"):
                self.render_collective(entity_type, sample_collective_vars(self, entity_type))

    # -- identity ------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """Short hash of everything that shapes the prompt text (not name nor token limits)."""
        return stable_hash(
            {
                "format": PROMPT_FORMAT_VERSION,
                "item_noun": self.item_noun,
                "user_factors": self.user_factors,
                "item_factors": self.item_factors,
                "system_prompt": self.system_prompt,
                "user_template": self.user_template,
                "item_template": self.item_template,
                "history_length": self.history_length,
                "title_max_chars": self.title_max_chars,
                "text_max_chars": self.text_max_chars,
                "rating_max": self.rating_max,
                "user_attributes": self.user_attributes,
                "item_text_columns": self.item_text_columns,
                "item_text_max_chars": self.item_text_max_chars,
                "empty_history_text": self.empty_history_text,
            },
            length=12,
        )

    def max_new_tokens(self, kind: str) -> int:
        """Token budget for KIND_USER or KIND_ITEM answers."""
        if kind == KIND_USER:
            return self.generation.user_max_new_tokens
        if kind == KIND_ITEM:
            return self.generation.item_max_new_tokens
        raise ValueError(f"unknown knowledge kind {kind!r}")

    def sampling_params(self, kind: str, **overrides: Any) -> SamplingParams:
        """SamplingParams with this scenario's token budget for ``kind``."""
        return SamplingParams(**{"max_new_tokens": self.max_new_tokens(kind), **overrides})

    # -- rendering -----------------------------------------------------------------------

    def render_system(self) -> str:
        return self._render("system_prompt", {"item_noun": self.item_noun})

    def render_user(self, variables: dict[str, Any]) -> str:
        base = {"item_noun": self.item_noun, "factors": self.user_factors}
        return self._render("user_template", {**base, **variables})

    def render_item(self, variables: dict[str, Any]) -> str:
        base = {"item_noun": self.item_noun, "factors": self.item_factors}
        return self._render("item_template", {**base, **variables})

    @property
    def collective_templates(self) -> CollectiveTemplates:
        return self.collective or CollectiveTemplates()

    @property
    def collective_version(self) -> str:
        """Version of the cluster questions: the scenario's version + the collective templates."""
        return stable_hash(
            {"scenario": self.version, "collective": self.collective_templates.model_dump()},
            length=12,
        )

    def render_collective(self, entity_type: str, variables: dict[str, Any]) -> str:
        """The question about one cluster of users (``"user"``) or items (``"item"``)."""
        if entity_type not in ("user", "item"):
            raise ValueError(f"entity_type must be 'user' or 'item', got {entity_type!r}")
        factors = self.user_factors if entity_type == "user" else self.item_factors
        field = f"collective.{entity_type}_template"
        if field not in self._templates:
            source = getattr(self.collective_templates, f"{entity_type}_template")
            self._templates[field] = _ENV.from_string(source)
        return self._render(field, {"item_noun": self.item_noun, "factors": factors, **variables})

    def _render(self, field: str, variables: dict[str, Any]) -> str:
        try:
            text = self._templates[field].render(**variables)
        except TemplateError as exc:  # UndefinedError, SecurityError, ...
            where = f"{self.source}: " if self.source else f"scenario {self.name!r}: "
            raise ConfigError(
                f"{where}field {field!r}: {type(exc).__name__}: {exc.message}"
            ) from exc
        text = text.strip()
        if not text:
            raise ConfigError(f"scenario {self.name!r}: field {field!r} rendered empty")
        return text


def scenario_dirs(search_dirs: list[str | Path] | None = None) -> list[Path]:
    """Folders searched for bare scenario names, in order."""
    dirs = [Path(d) for d in (search_dirs or [])]
    with contextlib.suppress(FileNotFoundError):
        dirs.append(bundled_dir("prompts"))
    return dirs


def list_scenarios(search_dirs: list[str | Path] | None = None) -> list[str]:
    """Names of the scenarios found in ``search_dirs`` and the bundled folder."""
    names = {p.stem for d in scenario_dirs(search_dirs) if d.is_dir() for p in d.glob("*.y*ml")}
    return sorted(names)


def _resolve(name_or_path: str | Path, search_dirs: list[str | Path] | None) -> Path:
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"{path}: scenario file not found")
        return path
    dirs = scenario_dirs(search_dirs)
    for folder in dirs:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(d) for d in dirs) or "(no folders)"
    raise ConfigError(f"scenario {text!r} not found (searched {searched})")
