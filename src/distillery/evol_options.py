"""Evol-Instruct's options, in one typed place: `distillery evol`, the Python API (`EvolOptions`) and the
`evol` step of pipeline files all take their defaults and help text from here, so none can drift from the
others. Kept apart from `evol.py` so that the CLI can build its flags without importing the model client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillery.errors import UserError
from distillery.step import option

IN_DEPTH = ("constraints", "deepening", "concretizing", "reasoning", "complicate-input")
IN_BREADTH = ("breadth",)
METHODS = IN_DEPTH + IN_BREADTH
METHOD_GROUPS = {"in-depth": IN_DEPTH, "in-breadth": IN_BREADTH, "all": METHODS}
LANGS = ("en", "zh")

# How WizardLM samples rewrites and answers, wherever the user sets nothing else.
SAMPLING: dict[str, Any] = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 2048}


@dataclass(kw_only=True)
class EvolSettings:
    """What an Evol-Instruct run does, apart from where it reads, writes and which endpoint it asks
    (keyword-only, so `EvolOptions(input, output, endpoint, rounds=2)` keeps its positional order)."""

    rounds: int = option(4, "Evolution rounds (M); each live instruction is evolved once per round.")
    methods: tuple[str, ...] = option(
        METHODS, "Methods to draw from, comma-separated or repeated: constraints, deepening, concretizing, "
                 "reasoning, complicate-input, breadth, or the groups in-depth, in-breadth, all.")
    lang: str = option("en", "Template language: en or zh (the elimination rules know both).")
    answers: bool = option(True, "Answer every evolved instruction (rules 2 and 3 need answers).")
    answer_model: str | None = option(None, "Model that answers (default: --model).")
    answer_system: str | None = option(
        None, "System prompt sent with every answer request; default: WizardLM's \"You are a helpful assistant.\"")
    judge: bool = option(True, "Ask the model whether each evolution equals its parent (elimination rule 1).")
    keep_original: bool = option(False, "Also write the seeds as round-0 records.")
    templates: str | None = option(
        None, "Directory of replacement templates: <method>.txt, judge.txt, zh/<method>.txt.")

    def check(self) -> None:
        """Reject impossible settings before anything is read, sent or written."""
        if self.rounds < 1:
            raise UserError("--rounds must be at least 1")
        if self.lang not in LANGS:
            raise UserError(f"--lang must be one of {', '.join(LANGS)}, not {self.lang!r}")
        self.methods = parse_methods(self.methods)
        if not self.answers and (self.answer_model or self.answer_system):
            raise UserError("--answer-model and --answer-system need answers; drop them or drop --no-answers")


def parse_methods(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Comma lists and group names (in-depth, in-breadth, all) flattened, duplicates dropped, order kept."""
    chosen: list[str] = []
    for name in (part.strip() for item in names for part in item.split(",")):
        if not name:
            continue
        if name not in METHODS and name not in METHOD_GROUPS:
            raise UserError(f"unknown evolution method {name!r}; choose from {', '.join(METHODS)} "
                            f"or a group ({', '.join(METHOD_GROUPS)})")
        chosen.extend(m for m in METHOD_GROUPS.get(name, (name,)) if m not in chosen)
    if not chosen:
        raise UserError("--methods names no method")
    return tuple(chosen)
