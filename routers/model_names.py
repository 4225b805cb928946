"""Matching model names across spellings: an upstream's ``gpt-4o`` is the data's ``gpt-4o-2024-05-13``,
``meta-llama/Llama-3.1-8B-Instruct`` is ``Meta-Llama-3.1-8B-Instruct``.

Names are compared by a normal form (lower case, no organisation prefix, ``_`` read as ``-``, no
``meta-`` prefix, no ``-hf`` suffix, a few known aliases), then by the longest known name that the
asked name extends or that extends the asked name with a date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# same model, other spelling (normal forms): the data sets' README lists them per file
_ALIASES = {
    "gpt4-1106-preview": "gpt-4-1106-preview",
    "gpt-4-turbo-preview": "gpt-4-1106-preview",
    "gpt-4o": "gpt-4o-2024-05-13",  # MMLU-Pro's gpt-4o ran in May 2024, when the alias meant this snapshot
    "gpt4": "gpt-4",
    "gpt4-0314": "gpt-4-0314",
    "gpt35-turbo-instruct": "gpt-3.5-turbo-instruct",
    "mixtral-8x7b-chat": "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x7b-instruct": "mixtral-8x7b-instruct-v0.1",
    "mistral-7b-chat": "mistral-7b-instruct-v0.2",
}
# the snapshot an undated API name points to, where "the latest date" would pick another: OpenAI's
# MMDD snapshots carry no year, so 1106 (November 2023) sorts after 0125 (January 2024)
_POINTS_TO = {"gpt-3.5-turbo": "gpt-3.5-turbo-0125"}
_DATE = re.compile(r"^-?(\d{4}-\d{2}-\d{2}|\d{4}|\d{2}-\d{2}|\d{8})$")


def normal_form(name: str) -> str:
    """The comparable spelling of a model name."""
    form = _plain_form(name)
    return _ALIASES.get(form, form)


def _plain_form(name: str) -> str:
    """``normal_form`` before the aliases."""
    form = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    form = form.removeprefix("meta-").removesuffix("-hf")
    return re.sub(r"^llama(\d)", r"llama-\1", form)


def scores_by_model(scores: Mapping[str, float]) -> dict[str, float]:
    """A record's scores keyed by ``normal_form``; spellings of one model scored on the same
    record count as their mean."""
    by_form: dict[str, list[float]] = {}
    for name, value in scores.items():
        by_form.setdefault(normal_form(name), []).append(float(value))
    return {name: sum(values) / len(values) for name, values in by_form.items()}


def match_model(asked: str, known: Iterable[str]) -> str | None:
    """The known name that ``asked`` refers to, or None.

    Exact normal forms win; then a known name equal to ``asked`` plus a date or version suffix
    (``gpt-4o`` -> ``gpt-4o-2024-05-13``; the snapshot the API name points to, else the latest
    such date); then a known name that ``asked``
    extends with a date (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``).
    """
    names = list(known)
    wanted = normal_form(asked)
    by_form: dict[str, str] = {}
    for name in names:
        by_form.setdefault(normal_form(name), name)
    if wanted in by_form:
        return by_form[wanted]
    if _POINTS_TO.get(wanted) in by_form:
        return by_form[_POINTS_TO[wanted]]
    for form in dict.fromkeys((wanted, _plain_form(asked))):  # an alias's snapshot unknown: another one of its name
        found = _by_date(form, by_form)
        if found is not None:
            return found
    return None


def _by_date(wanted: str, by_form: dict[str, str]) -> str | None:
    """The known name that is ``wanted`` plus a date (the latest), or that ``wanted`` extends with one."""
    dated = sorted(form for form in by_form if form.startswith(wanted) and _DATE.match(form[len(wanted) :]))
    if dated:
        return by_form[dated[-1]]
    undated = [form for form in by_form if wanted.startswith(form) and _DATE.match(wanted[len(form) :])]
    if undated:
        return by_form[max(undated, key=len)]
    return None


#: the pair a router scores when the upstream models are not among its models: GPT-4-Turbo vs
#: Mixtral-8x7B, RouteLLM's pair, known to every shipped router
DEFAULT_PAIR = ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")


def resolve_pair(known: Iterable[str], strong: str, weak: str) -> tuple[str, str, str]:
    """The (strong, weak) names to score among ``known``, and why: the asked pair when both are
    known (by ``match_model``), else ``DEFAULT_PAIR``."""
    names = list(known)
    strong_known, weak_known = match_model(strong, names), match_model(weak, names)
    if strong_known is not None and weak_known is not None and strong_known != weak_known:
        return strong_known, weak_known, f"{strong!r} and {weak!r} are known to the router as {strong_known!r} and {weak_known!r}"
    unknown = [name for name, found in ((strong, strong_known), (weak, weak_known)) if found is None]
    default_strong, default_weak = (match_model(name, names) or name for name in DEFAULT_PAIR)
    why = f"{unknown} unknown to the router" if unknown else f"{strong!r} and {weak!r} are the same model to the router"
    return default_strong, default_weak, f"{why}; scoring the default pair {default_strong!r} vs {default_weak!r}"
