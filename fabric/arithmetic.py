"""Plain arithmetic answered exactly, before any LLM: "Calculate 1234 * 5678" is 7006652.

The embedded 135M model answered "1234 * 5678 = 091,128" for that question (a user trial, routed
to the mathematician as it should be). A worker whose spec lists `tools: [arithmetic]`
(agents/worker.py) answers a subtask that is nothing but an arithmetic request with this, as an
exact draft, and asks its LLM everything else.

Nothing is guessed: the subtask must be one expression (digits, + - * / // ** ^ × ÷, "x"
between numbers, parentheses, thousands commas), one percentage of a number ("15% of 240", "15
percent of 240") or the days between two ISO dates, with request words only around it
("calculate", "what is", "how much is", ...). A word problem, a unit, a variable or a function
name leaves it to the LLM. The orchestrator reads the same test on a question (`is_arithmetic`):
such a question goes to an agent with the `arithmetic` skill. The expression is parsed with
`ast` and evaluated over `Fraction`s (exact; no `eval`), with bounds on exponents and on the
result's size, so no input can make it slow.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from decimal import Decimal, localcontext
from fractions import Fraction

#: the skill an agent declares to be sent questions that are arithmetic (a spec with `tools:
#: [arithmetic]` has it: agents/spec.py)
ARITHMETIC_SKILL = "arithmetic"
#: words a request for a calculation may have besides the expression
REQUEST_WORDS = frozenset(
    "calculate compute evaluate work out what what's whats is how much does do equal equals to the result "
    "of value please can could you tell me give find solve answer".split()
)
MAX_DIGITS = 1000  # a result longer than this is left to the LLM (and to str()'s own 4,300-digit limit)
MAX_EXPONENT = 10_000

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+"
_PERCENT_OF = re.compile(rf"(?<![\d.,])({_NUMBER})\s*(?:%|percent\b)\s*of\s+({_NUMBER})(?![\d.,]\d)", re.IGNORECASE)
_EXPRESSION = re.compile(rf"[-+(\s]*(?:{_NUMBER})(?:[\s()]*(?:\*\*|//|[-+*/^×÷xX])[-+(\s]*(?:{_NUMBER})[\s)]*)+")


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        inner = _value(node.operand)
        return inner if isinstance(node.op, ast.UAdd) else -inner
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right  # ZeroDivisionError: not a number either
        if isinstance(node.op, ast.FloorDiv):
            return Fraction(left // right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
    raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ValueError("a fractional power has no exact value")
    n = int(exponent)
    size = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if abs(n) > MAX_EXPONENT or size * abs(n) > MAX_DIGITS:
        raise ValueError(f"{n} as an exponent is too large")
    return base**n


def _render(value: Fraction) -> str:
    """An integer as it is; a terminating decimal exactly; anything else to 12 digits, marked ≈."""
    if value.denominator == 1:
        return str(value.numerator)
    rest = value.denominator
    for prime in (2, 5):
        while rest % prime == 0:
            rest //= prime
    with localcontext() as ctx:
        ctx.prec = MAX_DIGITS
        exact = Decimal(value.numerator) / Decimal(value.denominator)
    if rest == 1:
        return format(exact.normalize(), "f")
    return f"≈ {float(value):.12g}"


def _stated(written: str, value: Fraction) -> str:
    """ "WRITTEN = VALUE", or "WRITTEN ≈ VALUE" when the value does not terminate."""
    rendered = _render(value)
    return f"{written} {rendered}" if rendered.startswith("≈") else f"{written} = {rendered}"


def _only_request_words(text: str, start: int, end: int) -> bool:
    """Whether `text` outside [start, end) is request words and punctuation only."""
    rest = (text[:start] + " " + text[end:]).lower()
    words = re.findall(r"[a-z']+", rest)
    return all(w in REQUEST_WORDS for w in words) and not re.search(r"[^\sa-z'?.!:=,]", rest)


def _number(written: str) -> Fraction:
    return Fraction(written.replace(",", ""))


def _percent_of(text: str) -> str | None:
    """ "15% of 240 = 36" when `text` asks for one percentage of a number and nothing else."""
    found = list(_PERCENT_OF.finditer(text))
    if len(found) != 1 or not _only_request_words(text, found[0].start(), found[0].end()):
        return None
    match = found[0]
    value = _number(match.group(1)) / 100 * _number(match.group(2))
    return _stated(" ".join(match.group(0).split()), value)


_ISO_DATE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
#: what a question for the days between two dates may say besides them: request words and these
_DAYS_WORDS = REQUEST_WORDS | frozenset(
    "how many days are there between from to until till and number of it pass passed".split()
)


def _days_between(text: str) -> str | None:
    """ "from 2025-01-01 to 2025-03-01 = 59 days" when `text` asks for nothing but the number of
    days between two ISO dates (a weekday, business days or a time of day: the LLM's)."""
    found = list(_ISO_DATE.finditer(text))
    if len(found) != 2 or "days" not in text.lower():
        return None
    rest = _ISO_DATE.sub(" ", text).lower()
    words = re.findall(r"[a-z']+", rest)
    if any(w not in _DAYS_WORDS for w in words) or re.search(r"[^\sa-z'?.!:,]", rest):
        return None
    try:
        first, second = (dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) for m in found)
    except ValueError:  # 2025-02-30
        return None
    days = abs((second - first).days)
    return f"from {found[0].group(0)} to {found[1].group(0)} = {days} day{'s' if days != 1 else ''}"


def is_arithmetic(text: str) -> bool:
    """Whether `text` asks for nothing but a value `pure_arithmetic` computes exactly."""
    return pure_arithmetic(text) is not None


def pure_arithmetic(text: str) -> str | None:
    """ "EXPRESSION = VALUE" when `text` asks for nothing but the value of one arithmetic
    expression, one percentage of a number or the days between two ISO dates; None otherwise
    (the caller asks its LLM)."""
    if (percent := _percent_of(text)) is not None:
        return percent
    if (days := _days_between(text)) is not None:
        return days
    found = [m for m in _EXPRESSION.finditer(text) if re.search(r"\d", m.group(0))]
    if len(found) != 1:
        return None
    match = found[0]
    if re.search(r"\d{4}-\d{1,2}-\d{1,2}", match.group(0)):
        return None  # a date, not a subtraction
    if not _only_request_words(text, match.start(), match.end()):
        return None
    written = " ".join(match.group(0).split())
    source = re.sub(r"(?<=\d),(?=\d{3})", "", written)
    source = source.replace("^", "**").replace("×", "*").replace("÷", "/")
    source = re.sub(r"(?<=[\d)\s])[xX](?=[\s\d(.])", "*", source)
    try:
        value = _value(ast.parse(source, mode="eval"))
        if max(len(str(abs(value.numerator))), len(str(value.denominator))) > MAX_DIGITS:
            return None
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return _stated(written, value)
