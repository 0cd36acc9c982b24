"""Answer extraction and equivalence: golden cases."""

import pytest

from deepprune.answers import AnswerSpec, answer_classes, answers_equivalent, extract_answer, find_last_boxed, is_correct

MATH = AnswerSpec("boxed_math")


@pytest.mark.parametrize("text, expected", [
    (r"so the answer is \boxed{42}.", "42"),
    (r"\boxed{\frac{1}{2}} wait, actually \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
    (r"\boxed{x^{2^{3}}}", "x^{2^{3}}"),
    (r"\fbox{7}", "7"),
    (r"no box here, the answer is 5", None),
    (r"\boxed{unbalanced {", None),
    (r"\boxed{}", None),
])
def test_find_last_boxed_matches_braces(text, expected):
    assert find_last_boxed(text) == expected


@pytest.mark.parametrize("a, b", [
    (r"\frac{1}{2}", r"\dfrac{1}{2}"),
    (r"\dfrac{3}{4}", "0.75"),
    (r"\tfrac12", r"\frac{1}{2}"),
    ("10", r"10\text{ cm}"),
    ("90", r"90^\circ"),
    ("50", r"50\%"),
    (r"\$5", "5"),
    ("(1, 2]", r"\left(1,2\right]"),
    (r"[0, \infty)", r"[0,\infty)"),
    (r"x = 3", "3"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
])
def test_equivalent_math_answers(a, b):
    assert answers_equivalent(extract_answer(rf"\boxed{{{a}}}", MATH), extract_answer(rf"\boxed{{{b}}}", MATH), MATH)


@pytest.mark.parametrize("a, b", [
    ("(1, 2]", "[1, 2]"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    ("10", "100"),
    ("A", "B"),
])
def test_different_math_answers(a, b):
    assert not answers_equivalent(extract_answer(rf"\boxed{{{a}}}", MATH), extract_answer(rf"\boxed{{{b}}}", MATH), MATH)


def test_missing_answer_never_agrees():
    assert not answers_equivalent(None, None, MATH)
    assert not answers_equivalent("3", None, MATH)
    classes = answer_classes([None, "3", None, r"\frac{6}{2}"], MATH)
    assert classes[1] == classes[3]
    assert len({classes[0], classes[2], classes[1]}) == 3


@pytest.mark.parametrize("text, expected", [
    ("The answer is (C).", "C"),
    ("... so the answer is: B", "B"),
    (r"Final: \boxed{D}", "D"),
    ("Answer: a", "A"),
    ("I cannot decide.", None),
])
def test_letter_extractor(text, expected):
    assert extract_answer(text, AnswerSpec("letter")) == expected


def test_regex_extractor_with_date_normaliser():
    spec = AnswerSpec("regex", pattern=r"(\d{1,2}/\d{1,2}/\d{4})(?=[^\n]*\s*$)", normalizer="date_mdy")
    assert extract_answer("Today is 1/2/2001.\nSo the answer is 3/4/2001.", spec) == "03/04/2001"
    assert extract_answer("Yesterday was 3/4/2001.\nWe cannot tell.", spec) is None
    assert is_correct("03/04/2001", "03/04/2001", spec) is True
    assert is_correct("03/04/2001", "3/5/2001", spec) is False
    assert is_correct("03/04/2001", None, spec) is None


def test_regex_number_normaliser():
    spec = AnswerSpec("regex", pattern=r"#### ([\d,.]+)", normalizer="number")
    assert extract_answer("so #### 1,200", spec) == "1200"
    assert extract_answer("so #### 2.50", spec) == "2.5"


def test_unknown_extractor_is_an_error():
    with pytest.raises(ValueError, match="unknown answer extractor"):
        extract_answer("x", AnswerSpec("nonsense"))


def test_a_gold_field_is_read_through_its_own_pattern_then_normalized_like_answers():
    spec = AnswerSpec(extractor="regex", pattern=r"(\d{1,2}/\d{1,2}/\d{4})", normalizer="date_mdy",
                      gold_pattern=r"####\s*(\S+)\s*$")
    assert is_correct("05/01/2021", "The date is... #### 5/1/2021", spec) is True
    assert is_correct("05/02/2021", "#### 5/1/2021", spec) is False
    assert is_correct("05/01/2021", "no marker here", spec) is None  # nothing to grade against
