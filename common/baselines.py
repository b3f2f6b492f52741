"""The scores a sceptic raises first: every activation score is reported beside them.

A score read before any code exists can only say "this problem looks hard", and the model's own
confidence in its program already says much of "this code is wrong". Each baseline is fitted on the
selection split (phase 1's sae rows) and returns a score that predicts "will pass" when high;
`level` says whether it can tell the programs of one task apart at all (`task`: no, `program`: yes).
A program-level baseline gives NaN on a row without a program (`program_error`), as the code
positions do, so neither is scored on rows the other cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ast
import warnings

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.classification import auroc

Scorer = Callable[[pd.DataFrame], np.ndarray]  # a table's rows -> one score per row, high = will pass
CLEAN_STOPS = ("eos", "code_end")  # the model ended its answer itself; every other stop reason is a cut
FAMILY_PRIOR_ROWS = 5  # a family's pass rate is shrunk towards the overall rate as if it had this many more rows
CONFIDENCE_COLUMNS = ("program_mean_logprob", "program_mean_margin", "program_tokens", "prompt_tokens")


@dataclass(frozen=True)
class Baseline:
    name: str
    level: str  # "task": the same for every program of a task; "program": can differ between them
    description: str
    fit: Callable[[pd.DataFrame], Scorer]  # fitted on the selection split's table
    needs: tuple[str, ...]  # table columns it reads


def _column(name: str) -> Callable[[pd.DataFrame], Scorer]:
    """A numeric column, its sign set on the fitting rows so that high predicts a pass."""
    def fit(table: pd.DataFrame) -> Scorer:
        values = table[name].to_numpy(dtype=float)
        known = ~np.isnan(values)
        sign = -1.0 if auroc(values[known], table["test_passed"].to_numpy(dtype=bool)[known]) < 0.5 else 1.0
        return lambda rows: sign * rows[name].to_numpy(dtype=float)
    return fit


def _family_rate(table: pd.DataFrame) -> Scorer:
    """Target encoding: the family's pass rate on the fitting rows, shrunk towards the overall rate; a family
    never seen there (always, under split_by=family) gets the overall rate."""
    passed = table["test_passed"].astype(float)
    overall = float(passed.mean())
    stats = passed.groupby(table["family"]).agg(["sum", "count"])
    encoded = ((stats["sum"] + FAMILY_PRIOR_ROWS * overall) / (stats["count"] + FAMILY_PRIOR_ROWS)).to_dict()
    return lambda rows: rows["family"].map(encoded).fillna(overall).to_numpy(dtype=float)


def _prompt_words(table: pd.DataFrame) -> Scorer:
    """Bag of words of the prompt (TF-IDF over words seen in two distinct prompts or more) in a logistic
    regression on every row; the vocabulary is fitted on distinct prompts, since each task's prompt repeats."""
    prompts = table["prompt"].drop_duplicates().tolist()
    vectorizer = TfidfVectorizer(min_df=2 if len(prompts) > 1 else 1).fit(prompts)
    model = LogisticRegression(max_iter=2000, C=1.0).fit(vectorizer.transform(table["prompt"].tolist()),
                                                          table["test_passed"].to_numpy(dtype=bool))
    return lambda rows: model.decision_function(vectorizer.transform(rows["prompt"].tolist()))


def _parses(code: str) -> float:
    try:
        with warnings.catch_warnings():  # the model's code may hold e.g. "1abc": Python warns before it fails
            warnings.simplefilter("ignore", SyntaxWarning)
            ast.parse(code)
    except (SyntaxError, ValueError):
        return 0.0
    return 1.0


def _program_parses(_table: pd.DataFrame) -> Scorer:
    """1 when the program is valid Python, else 0: a broken program fails whatever the model knows."""
    return lambda rows: rows["generated_code"].map(_parses).to_numpy(dtype=float)


def _ended_itself(_table: pd.DataFrame) -> Scorer:
    """1 when the model ended its answer itself (end of text, closed code block), 0 when a stop rule or the
    token budget cut it: a cut program almost never passes."""
    return lambda rows: rows["stop_reason"].isin(CLEAN_STOPS).to_numpy(dtype=float)


def _confidence_and_length(table: pd.DataFrame) -> Scorer:
    """The model's confidence and the lengths together in one logistic regression: the strongest sceptic."""
    columns = list(CONFIDENCE_COLUMNS)
    known = table[columns].notna().all(axis=1).to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(table.loc[known, columns].to_numpy(dtype=float), table["test_passed"].to_numpy(dtype=bool)[known])

    def score(rows: pd.DataFrame) -> np.ndarray:
        out = np.full(len(rows), np.nan)
        ok = rows[columns].notna().all(axis=1).to_numpy()
        if ok.any():
            out[ok] = model.decision_function(rows.loc[ok, columns].to_numpy(dtype=float))
        return out
    return score


BASELINES: tuple[Baseline, ...] = (
    Baseline("prompt_tokens", "task", "length of the prompt in tokens", _column("prompt_tokens"), ("prompt_tokens",)),
    Baseline("difficulty", "task", "difficulty level of the synthetic task (primitives composed)",
             _column("difficulty"), ("difficulty",)),
    Baseline("reference_complexity", "task", "cyclomatic complexity of the reference solution",
             _column("cyclomatic_complexity"), ("cyclomatic_complexity",)),
    Baseline("task_family", "task", "the family's pass rate on the selection split (target encoding)", _family_rate,
             ("family",)),
    Baseline("prompt_words", "task", "bag-of-words logistic regression on the prompt text", _prompt_words,
             ("prompt",)),
    Baseline("program_tokens", "program", "length of the program in tokens", _column("program_tokens"),
             ("program_tokens",)),
    Baseline("program_mean_logprob", "program", "the model's mean log-probability of its program's tokens",
             _column("program_mean_logprob"), ("program_mean_logprob",)),
    Baseline("program_mean_margin", "program", "mean top-1 minus top-2 log-probability over the program's tokens",
             _column("program_mean_margin"), ("program_mean_margin",)),
    Baseline("program_parses", "program", "the program is valid Python", _program_parses, ("generated_code",)),
    Baseline("ended_itself", "program", "the model ended its answer itself (not cut by a stop rule or the budget)",
             _ended_itself, ("stop_reason",)),
    Baseline("confidence_and_length", "program",
             "logistic regression on prompt length, program length, mean log-probability and mean margin",
             _confidence_and_length, CONFIDENCE_COLUMNS),
)
STRONGEST_DECLARED = "confidence_and_length"  # every score is also compared with this one, chosen before any data


def fitted_scorer(baseline: Baseline, table: pd.DataFrame) -> Scorer:
    """The baseline fitted on `table`; a program-level one is fitted on, and scores, only rows with a program."""
    if baseline.level != "program":
        return baseline.fit(table)
    scorer = baseline.fit(table[table["program_error"].isna()] if "program_error" in table else table)

    def masked(rows: pd.DataFrame) -> np.ndarray:
        scores = np.asarray(scorer(rows), dtype=float).copy()
        if "program_error" in rows:
            scores[rows["program_error"].notna().to_numpy()] = np.nan
        return scores
    return masked


def applicable(baseline: Baseline, table: pd.DataFrame) -> str | None:
    """None when the baseline can be fitted on this table; else why not (a dataset without families, ...)."""
    passed = table["test_passed"].to_numpy(dtype=bool)
    if passed.all() or not passed.any():
        return "the fitting split has one class only"
    missing = [column for column in baseline.needs if column not in table]
    if missing:
        return f"the table has no {', '.join(missing)} column"
    if baseline.name == "difficulty" and (table["difficulty"] <= 0).all():
        return "the dataset has no difficulty levels"
    if baseline.name == "task_family" and (table["family"].astype(str) == "").all():
        return "the dataset has no task families"
    return None
