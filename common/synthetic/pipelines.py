"""Families built by composing primitives over a sequence: filter(s) -> map -> reduce (-> order).

Difficulty is the number of primitives composed, and the reference solution is written as an
explicit loop with one `if` per filter, so its cyclomatic complexity rises with the level too.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

from common.synthetic.engine import Draft

OPENINGS = ("Write a python function that takes", "Write a function that takes", "Create a python function that takes",
            "Implement a function that takes", "Define a python function that takes", "Write a Python function which takes")


@dataclass(frozen=True)
class Prim:
    key: str
    phrase: str
    code: str  # template over {v}: a condition (filter) or an expression (map)
    group: str = ""  # filters of one group are never combined (even AND odd would keep nothing)
    numeric: bool = False  # a map whose results are numbers


@dataclass(frozen=True)
class Terminal:
    key: str
    phrase: str  # over {items}
    init: str
    update: str  # over {v}; may span lines
    result: str  # over {acc}: the accumulator variable
    acc: str
    uses_value: bool = True
    needs_number: bool = False  # sum, product, largest, smallest: only over numbers


@dataclass(frozen=True)
class Source:
    key: str  # last part of function names: "list", "digits", "words"
    takes: str  # "a list of integers"
    noun: str  # what the elements are called: "numbers"
    params: tuple[str, ...]
    iterate: str  # over {p}
    var: str
    convert: str | None  # expression over {raw} giving the element, e.g. "int({raw})"
    random_input: Callable[[random.Random], tuple]
    edge_inputs: tuple[tuple, ...]
    numeric: bool = True  # elements are numbers


@dataclass(frozen=True)
class PipelineFamily:
    name: str
    category: str
    source: Source
    filters: tuple[Callable[[random.Random], Prim], ...]
    maps: tuple[Callable[[random.Random], Prim], ...]
    terminals: tuple[Terminal, ...]
    levels: dict[int, str]  # level -> stages: F filter, M map, T terminal, O order (post)
    orders: tuple[Prim, ...] = ()  # O: reorders the accumulated list, over {acc}: "sorted({acc})"

    def draft(self, rng: random.Random, level: int) -> Draft:
        stages = self.levels[level]
        filters = _distinct([f(rng) for f in rng.sample(self.filters, k=len(self.filters))], stages.count("F"))
        mapping = rng.choice(self.maps)(rng) if "M" in stages else None
        numbers = mapping.numeric if mapping else self.source.numeric
        terminal = rng.choice([t for t in self.terminals
                               if (t.uses_value or mapping is None) and (numbers or not t.needs_number)])
        order = rng.choice(self.orders) if "O" in stages else None
        param = rng.choice(self.source.params)
        name = "_".join([terminal.key] + ([mapping.key] if mapping else []) + [f.key for f in filters]
                        + [self.source.key])
        return Draft(self.name, self.category, level, name,
                     self._statement(rng, filters, mapping, terminal, order),
                     self._code(name, param, filters, mapping, terminal, order),
                     self._inputs(rng))

    def _statement(self, rng, filters, mapping, terminal, order) -> str:
        noun = self.source.noun
        steps = []
        if filters:
            steps.append(f"keeps only the {noun} that are " + " and ".join(f.phrase for f in filters))
        if mapping:
            steps.append(mapping.phrase.format(each="each of them" if filters else f"each of the {noun}"))
        items = "the results" if mapping else (f"the remaining {noun}" if filters else f"the {noun}")
        steps.append(terminal.phrase.format(items=items))
        if order:
            steps[-1] += f", {order.phrase}"
        opening = f"{rng.choice(OPENINGS)} {self.source.takes}"
        if len(steps) == 1:
            return f"{opening} and {steps[0]}."
        return f"{opening}, {', '.join(steps[:-1])}, and {steps[-1]}."

    def _code(self, name, param, filters, mapping, terminal, order) -> str:
        v = self.source.var
        loop_var = "raw" if self.source.convert else v
        lines = [f"def {name}({param}):", f"    {terminal.init}",
                 f"    for {loop_var} in {self.source.iterate.format(p=param)}:"]
        indent = " " * 8
        if self.source.convert:
            lines.append(f"{indent}{v} = {self.source.convert.format(raw=loop_var)}")
        if filters:
            lines.append(f"{indent}if {' and '.join(f.code.format(v=v) for f in filters)}:")
            indent += " " * 4
        if mapping:
            lines.append(f"{indent}{v} = {mapping.code.format(v=v)}")
        lines += [indent + line for line in terminal.update.format(v=v).splitlines()]
        accumulated = order.code.format(acc=terminal.acc) if order else terminal.acc
        lines.append(f"    return {terminal.result.format(acc=accumulated)}")
        return "\n".join(lines) + "\n"

    def _inputs(self, rng) -> list[tuple]:
        return list(self.source.edge_inputs) + [self.source.random_input(rng) for _ in range(12)]


def _distinct(prims: list[Prim], k: int) -> list[Prim]:
    """The first k primitives of different groups."""
    chosen: list[Prim] = []
    for prim in prims:
        if len(chosen) == k:
            break
        if all(prim.group != c.group for c in chosen):
            chosen.append(prim)
    return chosen


# ---- primitive pools -------------------------------------------------------------------------

def _k(rng: random.Random, low: int = 2, high: int = 9) -> int:
    return rng.randint(low, high)


INT_FILTERS = (
    lambda r: Prim("even", "even", "{v} % 2 == 0", "parity"),
    lambda r: Prim("odd", "odd", "{v} % 2 == 1", "parity"),
    lambda r: Prim("positive", "positive", "{v} > 0", "size"),
    lambda r: Prim("negative", "negative", "{v} < 0", "size"),
    lambda r: (lambda k: Prim(f"over{k}", f"greater than {k}", f"{{v}} > {k}", "size"))(_k(r, 1, 9)),
    lambda r: (lambda k: Prim(f"under{k}", f"smaller than {k}", f"{{v}} < {k}", "size"))(_k(r, 1, 9)),
    lambda r: (lambda k: Prim(f"div{k}", f"divisible by {k}", f"{{v}} % {k} == 0", "divisor"))(_k(r, 3, 7)),
    lambda r: (lambda k: Prim(f"notdiv{k}", f"not divisible by {k}", f"{{v}} % {k} != 0", "divisor"))(_k(r, 3, 7)),
)
INT_MAPS = (
    lambda r: Prim("squared", "squares {each}", "{v} * {v}", numeric=True),
    lambda r: Prim("doubled", "doubles {each}", "2 * {v}", numeric=True),
    lambda r: Prim("abs", "replaces {each} by its absolute value", "abs({v})", numeric=True),
    lambda r: (lambda k: Prim(f"plus{k}", "adds %d to {each}" % k, f"{{v}} + {k}", numeric=True))(_k(r)),
    lambda r: (lambda k: Prim(f"minus{k}", "subtracts %d from {each}" % k, f"{{v}} - {k}", numeric=True))(_k(r)),
    lambda r: Prim("lastdigit", "replaces {each} by its last digit (of the absolute value)", "abs({v}) % 10",
                   numeric=True),
)
NUMBER_TERMINALS = (
    Terminal("sum", "returns the sum of {items}", "total = 0", "total += {v}", "{acc}", "total", needs_number=True),
    Terminal("product", "returns the product of {items} (1 if there are none)", "product = 1", "product *= {v}",
             "{acc}", "product", needs_number=True),
    Terminal("count", "returns how many of {items} there are", "count = 0", "count += 1", "{acc}", "count",
             uses_value=False),
    Terminal("largest", "returns the largest of {items}, or None if there are none", "best = None",
             "if best is None or {v} > best:\n    best = {v}", "{acc}", "best", needs_number=True),
    Terminal("smallest", "returns the smallest of {items}, or None if there are none", "best = None",
             "if best is None or {v} < best:\n    best = {v}", "{acc}", "best", needs_number=True),
)
LIST_TERMINAL = (Terminal("keep", "returns {items} as a list", "result = []",
                          "result.append({v})", "{acc}", "result"),)
LIST_ORDERS = (Prim("asc", "sorted in ascending order", "sorted({acc})"),
               Prim("desc", "sorted in descending order", "sorted({acc}, reverse=True)"),
               Prim("rev", "in reverse order", "{acc}[::-1]"))

CHAR_FILTERS = (
    lambda r: Prim("vowels", "vowels (a, e, i, o, u in either case)", "{v}.lower() in 'aeiou'", "class"),
    lambda r: Prim("consonants", "letters other than vowels", "{v}.isalpha() and {v}.lower() not in 'aeiou'", "class"),
    lambda r: Prim("letters", "letters", "{v}.isalpha()", "class"),
    lambda r: Prim("digits", "digits", "{v}.isdigit()", "class"),
    lambda r: Prim("upper", "upper-case letters", "{v}.isupper()", "class"),
    lambda r: Prim("lower", "lower-case letters", "{v}.islower()", "class"),
    lambda r: (lambda s: Prim(f"not_{s}", f"not one of the characters '{s}'", f"{{v}} not in '{s}'", "exclude"))(
        "".join(sorted(r.sample("abcdeilmnorst", 3)))),
)
CHAR_MAPS = (
    lambda r: Prim("up", "turns {each} to upper case", "{v}.upper()"),
    lambda r: Prim("down", "turns {each} to lower case", "{v}.lower()"),
    lambda r: Prim("swap", "swaps the case of {each}", "{v}.swapcase()"),
    lambda r: Prim("twice", "writes {each} twice", "{v} * 2"),
)
def _joins(*specs: tuple[str, str, str]) -> tuple[Terminal, ...]:
    """Terminals that collect the items and join them with a separator: (key, separator, wording)."""
    return tuple(Terminal(key, f"returns {{items}} joined {how}", "parts = []", "parts.append({v})",
                          f"'{sep}'.join({{acc}})", "parts") for key, sep, how in specs)


CHAR_TERMINALS = _joins(("joined", "", "into one string"), ("dashed", "-", "with '-' between them"),
                        ("dotted", ".", "with '.' between them"))
STRING_ORDERS = (Prim("rev", "taken in reverse order", "{acc}[::-1]"),)

WORD_FILTERS = (
    lambda r: (lambda k: Prim(f"longer{k}", f"longer than {k} characters", f"len({{v}}) > {k}", "length"))(_k(r, 2, 5)),
    lambda r: (lambda k: Prim(f"shorter{k}", f"shorter than {k} characters", f"len({{v}}) < {k}", "length"))(
        _k(r, 3, 6)),
    lambda r: Prim("vowelstart", "starting with a vowel", "{v}[0].lower() in 'aeiou'", "start"),
    lambda r: Prim("capital", "starting with an upper-case letter", "{v}[0].isupper()", "start"),
    lambda r: Prim("evenlen", "of even length", "len({v}) % 2 == 0", "length"),
    lambda r: (lambda c: Prim(f"has_{c}", f"containing the letter '{c}'", f"'{c}' in {{v}}.lower()", "contains"))(
        r.choice("aeiorst")),
)
WORD_MAPS = (
    lambda r: Prim("upper", "upper-cases {each}", "{v}.upper()"),
    lambda r: Prim("reversed", "reverses {each}", "{v}[::-1]"),
    lambda r: Prim("initial", "replaces {each} by its first letter", "{v}[0]"),
    lambda r: Prim("title", "capitalises {each} (first letter upper, rest lower)", "{v}.capitalize()"),
    lambda r: Prim("lower", "lower-cases {each}", "{v}.lower()"),
)
WORD_JOINS = _joins(("spaced", " ", "with single spaces"), ("dashed", "-", "with '-'"), ("comma", ",", "with ','"),
                    ("joined", "", "with nothing between them"))
WORD_ORDERS = (Prim("sorted", "taken in the order Python's sorted() gives", "sorted({acc})"),)
LENGTH_MAP = (lambda r: Prim("lengths", "replaces {each} by its length", "len({v})", numeric=True),)


# ---- input generators -----------------------------------------------------------------------

def _int_list(r: random.Random) -> tuple:
    return ([r.randint(-9, 15) for _ in range(r.randint(2, 8))],)


def _text(r: random.Random) -> tuple:
    alphabet = string.ascii_letters + string.digits + "  .,!-"
    return ("".join(r.choice(alphabet) for _ in range(r.randint(3, 14))),)


_WORDS = ("apple", "Orange", "kiwi", "stone", "river", "Echo", "idea", "tree", "Umbrella", "sky", "at", "moon",
          "Island", "cat", "oak", "Paris", "axe", "dream", "ink", "sun", "Alpha", "bee", "ocean", "tiger")


def _sentence(r: random.Random) -> tuple:
    return (" ".join(r.choice(_WORDS) for _ in range(r.randint(2, 7))),)


FAMILIES = (
    PipelineFamily(
        "list_reduce", "lists",
        Source("list", "a list of integers", "numbers", ("numbers", "nums", "values"), "{p}", "x", None, _int_list,
               (([],), ([0],), ([7],), ([-4, 3, 3, 10],))),
        INT_FILTERS, INT_MAPS, NUMBER_TERMINALS, {1: "T", 2: "FT", 3: "FMT", 4: "FFMT"}),
    PipelineFamily(
        "list_transform", "lists",
        Source("list", "a list of integers", "numbers", ("numbers", "nums", "items"), "{p}", "x", None, _int_list,
               (([],), ([5],), ([-2, 8, 3, 3],))),
        INT_FILTERS, INT_MAPS, LIST_TERMINAL, {1: "MT", 2: "FMT", 3: "FFMT", 4: "FFMTO"}, LIST_ORDERS),
    PipelineFamily(
        "char_filter", "strings",
        Source("chars", "a string", "characters", ("text", "s", "word"), "{p}", "ch", None, _text,
               (("",), ("a",), ("Hello World 42",)), numeric=False),
        CHAR_FILTERS, CHAR_MAPS, CHAR_TERMINALS, {1: "FT", 2: "FMT", 3: "FFMT", 4: "FFMTO"}, STRING_ORDERS),
    PipelineFamily(
        "word_transform", "strings",
        Source("words", "a sentence of words separated by spaces", "words", ("sentence", "text", "line"), "{p}.split()",
               "word", None, _sentence, (("",), ("Apple",), ("the Owl ate eight ripe olives",)), numeric=False),
        WORD_FILTERS, WORD_MAPS, WORD_JOINS, {1: "MT", 2: "FMT", 3: "FFMT", 4: "FFMTO"}, WORD_ORDERS),
    PipelineFamily(
        "word_measure", "strings",
        Source("words", "a sentence of words separated by spaces", "words", ("sentence", "text", "phrase"),
               "{p}.split()",
               "word", None, _sentence, (("",), ("Apple",), ("an Owl ate eight ripe olives",)), numeric=False),
        WORD_FILTERS, LENGTH_MAP, NUMBER_TERMINALS[:1] + NUMBER_TERMINALS[2:4], {1: "T", 2: "FT", 3: "FMT", 4: "FFMT"}),
    PipelineFamily(
        "digit_reduce", "arithmetic",
        Source("digits", "a non-negative integer", "digits", ("n", "number", "num"), "str({p})", "d", "int({raw})",
               lambda r: (r.randint(10, 99999999),), ((0,), (7,), (1234,))),
        INT_FILTERS[:2] + INT_FILTERS[4:7], INT_MAPS[:2] + INT_MAPS[3:4], NUMBER_TERMINALS,
        {1: "T", 2: "FT", 3: "FMT", 4: "FFMT"}),
    PipelineFamily(
        "range_reduce", "arithmetic",
        Source("upto_n", "a positive integer n", "numbers from 1 to n", ("n", "limit", "upto"), "range(1, {p} + 1)", "i",
               None,
               lambda r: (r.randint(3, 40),), ((1,), (2,), (12,))),
        INT_FILTERS[:2] + INT_FILTERS[4:], INT_MAPS[:2] + INT_MAPS[3:], NUMBER_TERMINALS,
        {1: "T", 2: "FT", 3: "FMT", 4: "FFMT"}),
)
