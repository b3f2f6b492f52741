"""Hand-written task families: each level adds one more rule to the previous level's solution.

A family is a function (rng, level) -> Draft. Parameters (thresholds, divisors, words, names) are
drawn from the rng, so the same family yields many distinct statements.
"""

from __future__ import annotations

import random
import string
from typing import Callable

from common.synthetic.engine import Draft
from common.synthetic.pipelines import OPENINGS

_WORDS = ("red", "blue", "Red", "green", "sky", "tree", "Blue", "sun", "moon", "star", "sea", "Sea", "oak", "ash")


def _open(rng: random.Random) -> str:
    return rng.choice(OPENINGS)


def _ints(rng: random.Random, low: int = -9, high: int = 20, n: tuple[int, int] = (2, 9)) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(*n))]


def word_frequency(rng: random.Random, level: int) -> Draft:
    m = rng.randint(2, 3)
    name = {1: rng.choice(["distinct_words", "unique_word_count"]), 2: rng.choice(["word_counts", "tally_words"]),
            3: rng.choice(["word_counts_nocase", "tally_words_nocase"]), 4: f"frequent_words_{m}"}[level]
    if level == 1:
        body = "    return len(set(sentence.split()))\n"
    else:
        key = "word" if level == 2 else "word.lower()"
        body = f"    counts = {{}}\n    for word in sentence.split():\n        key = {key}\n"
        body += "        counts[key] = counts.get(key, 0) + 1\n"
        body += "    return counts\n" if level < 4 else f"    return sorted(k for k, n in counts.items() if n >= {m})\n"
    what = {1: "returns how many different words it contains (case matters)",
            2: "returns a dictionary mapping each word to the number of times it occurs",
            3: "returns a dictionary mapping each word, in lower case, to the number of times it occurs ignoring case",
            4: f"returns the sorted list of words (in lower case) that occur at least {m} times, ignoring case"}[level]
    def sentence(r: random.Random) -> tuple:
        return (" ".join(r.choice(_WORDS) for _ in range(r.randint(3, 9))),)
    return Draft("word_frequency", "dicts", level, name, f"{_open(rng)} a sentence and {what}.",
                 f"def {name}(sentence):\n{body}", [("",), ("sky",), ("sea Sea sea oak",)] + [sentence(rng) for _ in range(10)])

def group_by_remainder(rng: random.Random, level: int) -> Draft:
    k = rng.randint(2, 5)
    if level == 1:
        r = rng.randint(0, k - 1)
        name = f"count_mod{k}_is{r}"
        return Draft("group_by_remainder", "dicts", level, name,
                     f"{_open(rng)} a list of integers and returns how many of them leave remainder {r} when divided "
                     f"by {k}.", f"def {name}(numbers):\n    return sum(1 for x in numbers if x % {k} == {r})\n",
                     [([],), ([r],), ([r, r + k, 1, -3],)] + [(_ints(rng),) for _ in range(10)])
    name = f"group_mod{k}" if level == 2 else f"{'sum' if level < 4 else 'best'}_by_mod{k}"
    lines = ["    groups = {}", "    for x in numbers:"]
    indent = "        "
    if level >= 3:
        lines.append("        if x >= 0:")
        indent += "    "
    if level == 2:
        lines.append(f"{indent}groups.setdefault(x % {k}, []).append(x)")
    else:
        lines.append(f"{indent}groups[x % {k}] = groups.get(x % {k}, 0) + x")
    if level == 4:
        lines += ["    best = None", "    for key in sorted(groups):",
                  "        if best is None or groups[key] > groups[best]:", "            best = key", "    return best"]
    else:
        lines.append("    return groups")
    what = {2: f"returns a dictionary mapping each remainder modulo {k} to the list of numbers with that remainder, "
               "in their original order",
            3: f"ignores negative numbers and returns a dictionary mapping each remainder modulo {k} to the sum of the "
               "numbers with that remainder",
            4: f"ignores negative numbers, sums the numbers by their remainder modulo {k}, and returns the remainder "
               "with the largest sum (the smallest such remainder on ties), or None if no number is left"}[level]
    return Draft("group_by_remainder", "dicts", level, name, f"{_open(rng)} a list of integers and {what}.",
                 f"def {name}(numbers):\n" + "\n".join(lines) + "\n",
                 [([],), ([4],), ([-3, 3, 6, 1],)] + [(_ints(rng),) for _ in range(10)])


def score_table(rng: random.Random, level: int) -> Draft:
    k = rng.randint(40, 80)
    name = {1: rng.choice(["total_score", "score_sum"]), 2: f"passing_names_{k}", 3: f"vowel_names_above_{k}",
            4: f"top_name_above_{k}"}[level]
    body = {1: "    return sum(scores.values())\n",
            2: f"    return sorted(name for name, score in scores.items() if score >= {k})\n",
            3: f"    result = []\n    for name, score in scores.items():\n        if score >= {k} and name[0].lower() in 'aeiou':\n"
               "            result.append(name)\n    return sorted(result)\n",
            4: f"    best = None\n    for name in sorted(scores):\n        if scores[name] >= {k} and "
               "(best is None or scores[name] > scores[best]):\n            best = name\n    return best\n"}[level]
    what = {1: "returns the sum of all the scores (0 for an empty dictionary)",
            2: f"returns the alphabetically sorted list of names whose score is at least {k}",
            3: f"returns the alphabetically sorted list of names that start with a vowel and whose score is at least {k}",
            4: f"returns the name with the highest score among those scoring at least {k} (the alphabetically first "
               "on ties), or None if there is none"}[level]
    names = ["Ann", "bob", "Eve", "ian", "Olga", "Uma", "zed", "Kim", "abe", "Tom"]
    def table(r: random.Random) -> tuple:
        return ({n: r.randint(20, 100) for n in r.sample(names, r.randint(2, 6))},)
    return Draft("score_table", "dicts", level, name, f"{_open(rng)} a dictionary mapping names to integer scores and "
                 f"{what}.", f"def {name}(scores):\n{body}",
                 [({},), ({"Ann": k},), ({"Eve": k + 5, "bob": k - 1, "Olga": k + 5},)] + [table(rng) for _ in range(10)])


def common_elements(rng: random.Random, level: int) -> Draft:
    k = rng.randint(0, 8)
    descending = rng.random() < 0.5
    order, how = (", reverse=True", "from largest to smallest") if descending else ("", "from smallest to largest")
    name = {1: rng.choice(["share_a_value", "have_common", "overlap"]), 2: "common_values", 3: f"common_over_{k}",
            4: f"common_even_over_{k}"}[level]
    body = {1: "    return len(set(a) & set(b)) > 0\n",
            2: f"    return sorted(set(a) & set(b){order})\n",
            3: f"    return sorted((x for x in set(a) & set(b) if x > {k}){order})\n",
            4: f"    return sorted((x for x in set(a) & set(b) if x % 2 == 0 and x > {k}){order})\n"}[level]
    what = {1: "returns True if the two lists have at least one value in common, and False otherwise",
            2: f"returns the list of distinct values that appear in both lists, sorted {how}",
            3: f"returns the list of distinct values greater than {k} that appear in both lists, sorted {how}",
            4: f"returns the list of distinct even values greater than {k} that appear in both lists, sorted {how}"}[level]
    return Draft("common_elements", "sets", level, name, f"{_open(rng)} two lists of integers and {what}.",
                 f"def {name}(a, b):\n{body}",
                 [([], []), ([1], [1]), ([2, 2, 9, 4], [4, 2, 7]), ([3], [5])]
                 + [(_ints(rng, 0, 12), _ints(rng, 0, 12)) for _ in range(10)])

def classify_number(rng: random.Random, level: int) -> Draft:
    a, b = rng.sample([2, 3, 4, 5, 7], 2)
    wa, wb = rng.sample(["Fizz", "Buzz", "Ping", "Pong", "Zap"], 2)
    name = rng.choice(["label_number", "classify", "number_word"])
    rules = []
    if level >= 3:
        rules.append(("n < 0", "'Negative'", "negative numbers give 'Negative'"))
    if level >= 4:
        rules.append(("n == 0", "'Zero'", "zero gives 'Zero'"))
    if level >= 2:
        rules.append((f"n % {a} == 0 and n % {b} == 0", f"'{wa}{wb}'", f"multiples of both {a} and {b} give '{wa}{wb}'"))
    rules.append((f"n % {a} == 0", f"'{wa}'", f"multiples of {a} give '{wa}'"))
    if level >= 2:
        rules.append((f"n % {b} == 0", f"'{wb}'", f"multiples of {b} give '{wb}'"))
    code = f"def {name}(n):\n" + "".join(f"    {'if' if i == 0 else 'elif'} {c}:\n        return {v}\n"
                                          for i, (c, v, _) in enumerate(rules)) + "    return str(n)\n"
    statement = (f"{_open(rng)} an integer n and returns a label, checking these rules in order: "
                 + "; ".join(p for _, _, p in rules) + "; any other number gives its decimal string.")
    return Draft("classify_number", "control flow", level, name, statement, code,
                 [(0,), (-a * b,), (a * b,), (a,), (b,), (1,)] + [(rng.randint(-20, 60),) for _ in range(8)])


def grade_letter(rng: random.Random, level: int) -> Draft:
    cuts = sorted(rng.sample(range(40, 96, 5), level + 1 if level < 4 else 4), reverse=True)
    letters = ["A", "B", "C", "D", "E"][:len(cuts)]
    name = rng.choice(["grade", "letter_grade", "score_to_grade"])
    lines = [f"def {name}(score):"]
    if level == 4:
        lines += ["    if score < 0 or score > 100:", "        return 'invalid'"]
    if level == 1:
        lines += [f"    if score >= {cuts[1]}:", "        return 'pass'", "    return 'fail'"]
        rule = f"'pass' for a score of at least {cuts[1]} and 'fail' otherwise"
    else:
        lines += [f"    {'if' if i == 0 else 'elif'} score >= {c}:\n        return '{g}'" for i, (c, g) in
                  enumerate(zip(cuts, letters))] + ["    return 'F'"]
        rule = ", ".join(f"'{g}' from {c}" for c, g in zip(cuts, letters)) + ", and 'F' below that"
        if level == 4:
            rule += "; scores below 0 or above 100 give 'invalid'"
    return Draft("grade_letter", "control flow", level, name,
                 f"{_open(rng)} an integer score and returns a grade: {rule}.", "\n".join(lines) + "\n",
                 [(0,), (100,), (cuts[-1],), (cuts[0] - 1,), (-5,), (101,)] + [(rng.randint(-10, 110),) for _ in range(8)])


def _nested(rng: random.Random, depth: int = 3) -> list:
    out: list = []
    for _ in range(rng.randint(0, 4)):
        out.append(_nested(rng, depth - 1) if depth > 0 and rng.random() < 0.35 else rng.randint(-5, 12))
    return out


def nested_sum(rng: random.Random, level: int) -> Draft:
    if level == 1:
        name = rng.choice(["recursive_sum", "rec_total", "sum_recursively"])
        return Draft("nested_sum", "recursion", level, name,
                     f"{_open(rng)} a list of integers and returns their sum, computed with recursion (no loops).",
                     f"def {name}(items):\n    if not items:\n        return 0\n    return items[0] + {name}(items[1:])\n",
                     [([],), ([4],), ([1, -2, 3],)] + [(_ints(rng),) for _ in range(10)])
    name = {2: "deep_sum", 3: "deep_even_sum", 4: "depth_weighted_sum"}[level]
    args, call = ("items, depth=1", "depth + 1") if level == 4 else ("items", "")
    term = {2: "item", 3: "item if item % 2 == 0 else 0", 4: "item * depth"}[level]
    code = (f"def {name}({args}):\n    total = 0\n    for item in items:\n        if isinstance(item, list):\n"
            f"            total += {name}(item{', ' + call if call else ''})\n        else:\n            total += {term}\n"
            "    return total\n")
    what = {2: "returns the sum of all the integers in it, at any depth",
            3: "returns the sum of the even integers in it, at any depth",
            4: "returns the sum of each integer multiplied by its depth (integers in the outer list have depth 1)"}[level]
    return Draft("nested_sum", "recursion", level, name,
                 f"{_open(rng)} a list whose items are integers or lists of the same kind, and {what}. Use recursion.",
                 code, [([],), ([4],), ([1, [2, [3, 4]], 5],)] + [(_nested(rng),) for _ in range(10)])

def recursive_sequence(rng: random.Random, level: int) -> Draft:
    x, y = rng.randint(0, 3), rng.randint(1, 4)
    p, q, k, m = rng.randint(2, 3), rng.randint(1, 2), rng.randint(2, 5), rng.randint(7, 19)
    name = rng.choice(["seq", "term", "sequence_value"])
    rule, code = {
        1: (f"a(0) = {x} and a(n) = a(n - 1) + {k}", f"    if n == 0:\n        return {x}\n    return {name}(n - 1) + {k}\n"),
        2: (f"a(0) = {x}, a(1) = {y} and a(n) = a(n - 1) + a(n - 2)",
            f"    if n == 0:\n        return {x}\n    if n == 1:\n        return {y}\n    return {name}(n - 1) + {name}(n - 2)\n"),
        3: (f"a(0) = {x}, a(1) = {y} and a(n) = {p} * a(n - 1) - {q} * a(n - 2)",
            f"    if n == 0:\n        return {x}\n    if n == 1:\n        return {y}\n"
            f"    return {p} * {name}(n - 1) - {q} * {name}(n - 2)\n"),
        4: (f"a(0) = {x}, a(1) = {y}, a(2) = {x + y} and a(n) = (a(n - 1) + a(n - 2) + a(n - 3)) % {m}",
            f"    if n == 0:\n        return {x}\n    if n == 1:\n        return {y}\n    if n == 2:\n        return {x + y}\n"
            f"    return ({name}(n - 1) + {name}(n - 2) + {name}(n - 3)) % {m}\n"),
    }[level]
    return Draft("recursive_sequence", "recursion", level, name,
                 f"{_open(rng)} a non-negative integer n and returns a(n) for the sequence {rule}. Use recursion.",
                 f"def {name}(n):\n{code}", [(0,), (1,), (2,), (3,)] + [(rng.randint(4, 12),) for _ in range(6)])


def digit_recursion(rng: random.Random, level: int) -> Draft:
    name = {1: "digit_sum", 2: "digital_root", 3: "root_steps", 4: "product_persistence"}[level]
    code = {1: "    if n < 10:\n        return n\n    return n % 10 + digit_sum(n // 10)\n",
            2: "    if n < 10:\n        return n\n    return digital_root(sum(int(d) for d in str(n)))\n",
            3: "    if n < 10:\n        return 0\n    return 1 + root_steps(sum(int(d) for d in str(n)))\n",
            4: "    if n < 10:\n        return 0\n    product = 1\n    for d in str(n):\n        product *= int(d)\n"
               "    return 1 + product_persistence(product)\n"}[level]
    what = {1: "returns the sum of its digits, computed recursively",
            2: "repeatedly replaces it by the sum of its digits until one digit is left, and returns that digit",
            3: "returns how many times it must be replaced by the sum of its digits until it has one digit",
            4: "returns how many times it must be replaced by the product of its digits until it has one digit"}[level]
    return Draft("digit_recursion", "recursion", level, name, f"{_open(rng)} a non-negative integer and {what}.",
                 f"def {name}(n):\n{code}", [(0,), (9,), (10,), (99,)] + [(rng.randint(11, 10**7),) for _ in range(8)])


def sort_by_key(rng: random.Random, level: int) -> Draft:
    reverse = rng.random() < 0.5
    name = {1: "sorted_words", 2: "by_length", 3: "by_length_then_alpha", 4: "by_vowels"}[level]
    key = {1: ", reverse=True" if reverse else "", 2: ", key=len, reverse=True" if reverse else ", key=len",
           3: ", key=lambda w: (-len(w), w)" if reverse else ", key=lambda w: (len(w), w)",
           4: ", key=lambda w: (sum(1 for c in w if c in 'aeiou'), len(w), w)"}[level]
    what = {1: "in reverse alphabetical order" if reverse else "in alphabetical order",
            2: f"sorted by length {'from longest to shortest' if reverse else 'from shortest to longest'}, keeping the "
               "original order of words of equal length",
            3: f"sorted by length {'from longest to shortest' if reverse else 'from shortest to longest'}, and "
               "alphabetically among words of equal length",
            4: "sorted by their number of vowels (a, e, i, o, u), then by length, then alphabetically"}[level]
    pool = ["fig", "apple", "kiwi", "plum", "pear", "banana", "date", "lime", "melon", "grape", "yam", "cherry"]
    return Draft("sort_by_key", "sorting", level, name, f"{_open(rng)} a list of lower-case words and returns them {what}.",
                 f"def {name}(words):\n    return sorted(words{key})\n",
                 [([],), (["kiwi"],), (["pear", "fig", "plum", "yam"],)]
                 + [(rng.sample(pool, rng.randint(2, 7)),) for _ in range(10)])

def search_index(rng: random.Random, level: int) -> Draft:
    k = rng.randint(0, 9)
    name = {1: "find_first", 2: f"first_over_{k}", 3: f"last_even_over_{k}", 4: "first_sum_of_previous_two"}[level]
    args = "numbers, target" if level == 1 else "numbers"
    body = {1: "    for i, x in enumerate(numbers):\n        if x == target:\n            return i\n    return -1\n",
            2: f"    for i, x in enumerate(numbers):\n        if x > {k}:\n            return i\n    return -1\n",
            3: f"    for i in range(len(numbers) - 1, -1, -1):\n        if numbers[i] % 2 == 0 and numbers[i] > {k}:\n"
               "            return i\n    return -1\n",
            4: "    for i in range(2, len(numbers)):\n        if numbers[i] == numbers[i - 1] + numbers[i - 2]:\n"
               "            return i\n    return -1\n"}[level]
    what = {1: "a target value, and returns the index of the first occurrence of the target, or -1 if it is absent",
            2: f"returns the index of the first number greater than {k}, or -1 if there is none",
            3: f"returns the index of the last number that is even and greater than {k}, or -1 if there is none",
            4: "returns the first index i >= 2 whose number equals the sum of the two numbers just before it, or -1"}[level]
    def draw(r: random.Random) -> tuple:
        xs = _ints(r, 0, 12)
        return (xs, r.choice(xs + [99])) if level == 1 else (xs,)
    edges = [([], 3), ([3], 3), ([1, 3, 3], 3)] if level == 1 else [([],), ([k + 2],), ([1, 2, 3, 5, 8],)]
    return Draft("search_index", "searching", level, name, f"{_open(rng)} a list of integers{',' if level == 1 else ' and'}"
                 f" {what}.", f"def {name}({args}):\n{body}", edges + [draw(rng) for _ in range(10)])


def kth_largest(rng: random.Random, level: int) -> Draft:
    k = rng.randint(2, 4)
    extreme = rng.choice(["max", "min"])
    name = {1: f"{extreme}_value", 2: "second_largest", 3: f"kth_largest_{k}", 4: f"kth_largest_even_{k}"}[level]
    body = {1: f"    if not numbers:\n        return None\n    return {extreme}(numbers)\n",
            2: "    values = sorted(set(numbers), reverse=True)\n    return values[1] if len(values) > 1 else None\n",
            3: f"    values = sorted(set(numbers), reverse=True)\n    return values[{k - 1}] if len(values) >= {k} else None\n",
            4: f"    values = sorted({{x for x in numbers if x % 2 == 0}}, reverse=True)\n"
               f"    return values[{k - 1}] if len(values) >= {k} else None\n"}[level]
    what = {1: f"returns the {'largest' if extreme == 'max' else 'smallest'} number, or None for an empty list",
            2: "returns the second largest distinct value, or None if there are fewer than two distinct values",
            3: f"returns the {k}-th largest distinct value, or None if there are fewer than {k} distinct values",
            4: f"returns the {k}-th largest distinct even value, or None if there are fewer than {k} of them"}[level]
    return Draft("kth_largest", "sorting", level, name, f"{_open(rng)} a list of integers and {what}.",
                 f"def {name}(numbers):\n{body}",
                 [([],), ([5],), ([4, 4, 8, 2, 6, 8],)] + [(_ints(rng, -5, 20, (2, 10)),) for _ in range(10)])


def parse_key_values(rng: random.Random, level: int) -> Draft:
    sep, k = rng.choice([";", ",", "&"]), rng.randint(2, 9)
    name = {1: "keys_of", 2: "parse_pairs", 3: f"sum_over_{k}", 4: f"keys_over_{k}"}[level]
    if level == 1:
        lines = [f"    return [part.split('=')[0] for part in text.split('{sep}') if part]"]
    else:
        lines = ["    result = {}", f"    for part in text.split('{sep}'):", "        if not part:", "            continue",
                 "        key, value = part.split('=')", "        result[key] = int(value)",
                 {2: "    return result", 3: f"    return sum(v for v in result.values() if v > {k})",
                  4: f"    return ','.join(sorted((key for key in result if result[key] > {k}), "
                     "key=lambda key: (-result[key], key)))"}[level]]
    what = {1: "returns the list of the keys in the order they appear",
            2: "returns a dictionary of the keys and their integer values",
            3: f"returns the sum of the integer values greater than {k}",
            4: f"returns the keys whose integer value is greater than {k}, ordered by value from largest to smallest "
               "(alphabetically on ties) and joined with ','"}[level]
    def text(r: random.Random) -> tuple:
        keys = r.sample(list("abcdefghxyz"), r.randint(1, 5))
        return (sep.join(f"{key}={r.randint(0, 15)}" for key in keys),)
    return Draft("parse_key_values", "parsing", level, name,
                 f"{_open(rng)} a string of key=value pairs separated by '{sep}' (for example 'a=1{sep}b=12'), skips "
                 f"empty parts, and {what}.", f"def {name}(text):\n" + "\n".join(lines) + "\n",
                 [("",), (f"a={k}",), (f"x=3{sep}y={k + 1}{sep}z={k + 1}",)] + [text(rng) for _ in range(10)])

def format_numbers(rng: random.Random, level: int) -> Draft:
    width, sep = rng.randint(2, 4), rng.choice([", ", "; ", " | "])
    name = {1: "join_numbers", 2: f"pad_numbers_{width}", 3: f"pad_signed_{width}", 4: f"pad_unique_{width}"}[level]
    item = {1: "str(x)", 2: f"str(x).zfill({width})", 3: f"'(' + str(-x).zfill({width}) + ')' if x < 0 else str(x).zfill({width})",
            4: f"'(' + str(-x).zfill({width}) + ')' if x < 0 else str(x).zfill({width})"}[level]
    source = "dict.fromkeys(numbers)" if level == 4 else "numbers"
    body = (f"    return '{sep}'.join({item} for x in {source})\n" if level < 3 else
            f"    parts = []\n    for x in {source}:\n        parts.append({item})\n    return '[' + '{sep}'.join(parts) + ']'\n")
    what = {1: f"returns them as one string joined with '{sep}'",
            2: f"writes each with at least {width} digits (zero-padded on the left) and joins them with '{sep}'",
            3: f"writes each non-negative number zero-padded to {width} digits and each negative number as its zero-padded "
               f"absolute value in parentheses, joins them with '{sep}', and wraps the result in square brackets",
            4: f"keeps only the first occurrence of each number, writes each non-negative number zero-padded to {width} "
               f"digits and each negative number as its zero-padded absolute value in parentheses, joins them with "
               f"'{sep}', and wraps the result in square brackets"}[level]
    return Draft("format_numbers", "formatting", level, name, f"{_open(rng)} a list of integers, {what}.",
                 f"def {name}(numbers):\n{body}", [([],), ([7],), ([3, -12, 3, 450],)]
                 + [(_ints(rng, -120, 999, (1, 6)),) for _ in range(10)])


def clock_times(rng: random.Random, level: int) -> Draft:
    name = {1: "hour_of", 2: "to_minutes", 3: "minutes_between", 4: "duration_text"}[level]
    parse = "int(t[:2]) * 60 + int(t[3:])"
    body = {1: "    return int(time[:2])\n",
            2: f"    return {parse.replace('t[', 'time[')}\n",
            3: "    def minutes(t):\n        return " + parse + "\n    return minutes(end) - minutes(start)\n",
            4: "    def minutes(t):\n        return " + parse + "\n    total = (minutes(end) - minutes(start)) % 1440\n"
               "    return f'{total // 60}h {total % 60}m'\n"}[level]
    args = "time" if level <= 2 else "start, end"
    what = {1: "a time 'HH:MM' and returns the hour as an integer",
            2: "a time 'HH:MM' and returns the number of minutes since midnight",
            3: "two times 'HH:MM' (start and end) and returns end minus start in minutes (negative if end is earlier)",
            4: "two times 'HH:MM' (start and end) and returns the time from start to the next time the clock shows end, "
               "written as '<hours>h <minutes>m' (for example '2h 5m')"}[level]
    def clock(r: random.Random) -> str:
        return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"
    if level <= 2:
        inputs = [("00:00",), ("23:59",), ("01:05",)] + [(clock(rng),) for _ in range(10)]
    else:
        inputs = [("00:00", "00:00"), ("10:30", "09:15"), ("23:50", "00:10")] + [(clock(rng), clock(rng)) for _ in range(10)]
    return Draft("clock_times", "parsing", level, name, f"{_open(rng)} {what}.", f"def {name}({args}):\n{body}", inputs)


def run_length(rng: random.Random, level: int) -> Draft:
    name = {1: "count_runs", 2: "rle_encode", 3: "rle_short", 4: "rle_clean"}[level]
    prep = "    text = text.replace(' ', '').lower()\n" if level == 4 else ""
    if level == 1:
        body = "    runs = 0\n    for i, ch in enumerate(text):\n        if i == 0 or ch != text[i - 1]:\n            runs += 1\n    return runs\n"
    else:
        emit = "ch + str(n)" if level == 2 else "ch + (str(n) if n > 1 else '')"
        body = (prep + "    out = []\n    i = 0\n    while i < len(text):\n        ch = text[i]\n        n = 0\n"
                "        while i < len(text) and text[i] == ch:\n            i += 1\n            n += 1\n"
                f"        out.append({emit})\n    return ''.join(out)\n")
    what = {1: "returns the number of runs of equal consecutive characters",
            2: "returns its run-length encoding: each run of equal consecutive characters written as the character "
               "followed by the run length (for example 'aab' gives 'a2b1')",
            3: "returns its run-length encoding in which each run is the character followed by the run length, "
               "the length being left out when it is 1 (for example 'aab' gives 'a2b')",
            4: "removes all spaces, lower-cases it, and returns its run-length encoding in which each run is the "
               "character followed by the run length, left out when it is 1 (for example 'Aa b' gives 'a2b')"}[level]
    def text(r: random.Random) -> tuple:
        return ("".join(r.choice("aAbB c" if level == 4 else "abc") * r.randint(1, 3) for _ in range(r.randint(1, 6))),)
    return Draft("run_length", "strings", level, name, f"{_open(rng)} a string and {what}.", f"def {name}(text):\n{body}",
                 [("",), ("z",), ("aaBb  bcc",)] + [text(rng) for _ in range(10)])


def caesar_shift(rng: random.Random, level: int) -> Draft:
    k = rng.randint(1, 25)
    if level == 1:
        name = f"letter_after_{k}"
        return Draft("caesar_shift", "strings", level, name,
                     f"{_open(rng)} a lower-case letter and returns the letter {k} places after it in the alphabet, "
                     "wrapping around from 'z' to 'a'.", f"def {name}(letter):\n    return chr((ord(letter) - 97 + {k}) % 26 + 97)\n",
                     [("a",), ("z",), ("m",)] + [(rng.choice(string.ascii_lowercase),) for _ in range(10)])
    name = {2: f"caesar_{k}", 3: f"caesar_reversed_{k}", 4: f"alternating_shift_{k}"}[level]
    upper = "        elif ch.isupper():\n            out.append(chr((ord(ch) - 65 + shift) % 26 + 65))\n"
    shift = f"{k} if i % 2 == 0 else -{k}" if level == 4 else f"{k}"
    body = (f"    out = []\n    for i, ch in enumerate(text):\n        shift = {shift}\n        if ch.islower():\n"
            "            out.append(chr((ord(ch) - 97 + shift) % 26 + 97))\n" + upper
            + "        else:\n            out.append(ch)\n" + ("    return ''.join(out)[::-1]\n" if level == 3 else "    return ''.join(out)\n"))
    what = {2: f"shifts every letter {k} places forward in the alphabet, wrapping around and keeping its case, leaving "
               "every other character unchanged",
            3: f"shifts every letter {k} places forward in the alphabet, wrapping around and keeping its case, leaving "
               "every other character unchanged, and returns the result reversed",
            4: f"shifts the letters at even positions (0, 2, ...) {k} places forward and those at odd positions {k} "
               "places backward in the alphabet, wrapping around and keeping their case; other characters stay"}[level]
    def text(r: random.Random) -> tuple:
        return ("".join(r.choice(string.ascii_letters + " !xyz") for _ in range(r.randint(1, 12))),)
    return Draft("caesar_shift", "strings", level, name, f"{_open(rng)} a string, {what}.", f"def {name}(text):\n{body}",
                 [("",), ("z",), ("Hello, World!",)] + [text(rng) for _ in range(10)])


def brackets(rng: random.Random, level: int) -> Draft:
    name = {1: "open_minus_close", 2: "balanced", 3: "max_depth", 4: "balanced_two"}[level]
    if level == 1:
        body = "    return text.count('(') - text.count(')')\n"
    elif level <= 3:
        body = ("    depth = 0\n    deepest = 0\n    for ch in text:\n        if ch == '(':\n            depth += 1\n"
                "            deepest = max(deepest, depth)\n        elif ch == ')':\n            depth -= 1\n"
                "            if depth < 0:\n                return " + ("False" if level == 2 else "-1") + "\n"
                "    return " + ("depth == 0" if level == 2 else "deepest if depth == 0 else -1") + "\n")
    else:
        pairs = "{')': '(', ']': '['}"
        fail, ok = "False", "not stack"
        body = (f"    pairs = {pairs}\n    stack = []\n    for i, ch in enumerate(text):\n"
                "        if ch in pairs.values():\n            stack.append(ch)\n        elif ch in pairs:\n"
                f"            if not stack or stack.pop() != pairs[ch]:\n                return {fail}\n    return {ok}\n")
    what = {1: "returns the number of '(' characters minus the number of ')' characters",
            2: "returns True if its parentheses '(' and ')' are balanced (other characters are ignored)",
            3: "returns the maximum nesting depth of its parentheses, or -1 if they are not balanced (other characters "
               "are ignored)",
            4: "returns True if its brackets '()' and '[]' are balanced and properly nested (other characters are ignored)"
            }[level]
    alphabet = "()x" if level <= 3 else "()[]x"
    def text(r: random.Random) -> tuple:
        return ("".join(r.choice(alphabet) for _ in range(r.randint(0, 10))),)
    return Draft("brackets", "control flow", level, name, f"{_open(rng)} a string and {what}.", f"def {name}(text):\n{body}",
                 [("",), (")(",), ("(a[b](c))" if level == 4 else "(x(y))",)] + [text(rng) for _ in range(12)])


def matrix_sums(rng: random.Random, level: int) -> Draft:
    k = rng.randint(0, 15)
    agg = rng.choice(["sum", "max", "min"])
    noun = {"sum": "sums", "max": "largest values", "min": "smallest values"}[agg]
    name = {1: f"row_{agg}", 2: f"column_{agg}", 3: "diagonal_sum", 4: f"rows_over_{k}"}[level]
    body = {1: f"    return [{agg}(row) for row in grid]\n",
            2: f"    if not grid:\n        return []\n    return [{agg}(row[j] for row in grid) for j in range(len(grid[0]))]\n",
            3: "    total = 0\n    for i in range(len(grid)):\n        total += grid[i][i]\n        if i != len(grid) - 1 - i:\n"
               "            total += grid[i][len(grid) - 1 - i]\n    return total\n",
            4: f"    result = []\n    for i, row in enumerate(grid):\n        if sum(row) > {k}:\n            result.append(i)\n"
               "    return result\n"}[level]
    what = {1: f"returns the list of the {noun} of its rows",
            2: f"returns the list of the {noun} of its columns (an empty list for an empty grid)",
            3: "returns the sum of the numbers on both diagonals, counting the centre only once",
            4: f"returns the indices of the rows whose sum is greater than {k}"}[level]
    shape = ("a square grid of integers (a list of rows of equal length)" if level == 3 else
             "a grid of integers (a list of rows of equal length)")
    def grid(r: random.Random) -> tuple:
        n = r.randint(1, 4)
        cols = n if level == 3 else r.randint(1, 4)
        return ([[r.randint(-5, 9) for _ in range(cols)] for _ in range(n)],)
    return Draft("matrix_sums", "lists", level, name, f"{_open(rng)} {shape} and {what}.", f"def {name}(grid):\n{body}",
                 [([[4]],) if level == 3 else ([[-1]],) if level == 2 and agg != "sum" else ([],), ([[1, 2], [3, 4]],), ([[1, 2, 3], [4, 5, 6], [7, 8, 9]],)]
                 + [grid(rng) for _ in range(10)])


FAMILIES: tuple[Callable[[random.Random, int], Draft], ...] = (
    word_frequency, group_by_remainder, score_table, common_elements, classify_number, grade_letter, nested_sum,
    recursive_sequence, digit_recursion, sort_by_key, search_index, kth_largest, parse_key_values, format_numbers,
    clock_times, run_length, caesar_shift, brackets, matrix_sums,
)
