"""Tool arguments read from the text before any LLM: what a tool's JSON schema makes checkable.

    found, left = extract(tool.input_schema, "What is the current time in Tokyo?")
    # found == {"timezone": "Asia/Tokyo"}, left == []   (for current_time(timezone: str))

Pure functions, no network; the only files read are the time-zone tables of the system's (or
the `tzdata` package's) zoneinfo database, once.

What is filled, each value validated against its parameter's schema (bounds, enum, type):

- enum and const values named in the text (word match, case-insensitive; `_`/`-` read as spaces);
- numbers and integers within their bounds (`-3`, `1,000`, `2.5`, `five`), never from inside a
  date, time, URL, quoted span or an expression another parameter takes;
- booleans whose name words appear in the text (`true`, or `false` after "no", "not", "without");
- strings with format date, date-time, time, uri or email (a date also when the description
  says YYYY-MM-DD): ISO dates from "2024-03-01", "March 1, 2024", "1 March 2024", "2024/03/01";
- IANA time-zone names for time-zone parameters: named ("Asia/Tokyo", "UTC"), from a city (the
  last part of a zone name, `_` as a space: "Tokyo", "New York") or from a country with a
  single zone (zone.tab and iso3166.tab of the zoneinfo database: "Japan");
- quoted spans ("...", '...', “...”, `...`) for other string parameters;
- arithmetic expressions (parsed with `ast`, never evaluated) for parameters whose name or
  description says expression, formula, equation, polynomial or function.

When several values of a kind compete for several parameters, a value goes to the parameter
whose name words stand nearest to it (left of the value counts a little more: "base of 10",
"height of 5"); what is still open is matched in order only when the counts agree exactly
(text order = schema order). Anything else is left to the LLM, which is why `extract` returns
the required parameters it could not fill.

Free text: `is_free_text` says whether a parameter takes a whole request (query, text,
question, prompt, message, input, content). A time zone, URL, path, identifier, SQL statement,
expression or date is never free text, whatever its description says.

After the LLM: `trim_run_on` cuts a written string that starts with the task's words and then
runs into junk (the embedded model under a grammar writes until max_tokens).

Measured on BFCL (`benchmarks/tool_args.py`, bfcl-eval's AST checker; numbers in
docs/architecture.md, "Tool arguments").
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import math
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

FREE_TEXT_WORDS = frozenset("query text question prompt message input content".split())
#: words in a parameter's name that make it a value, not free text
NOT_FREE_WORDS = frozenset(
    "timezone tz zone url uri link path file filename dir directory id ids identifier uuid key sql expression "
    "expr formula equation date time datetime email code language lang format type mode unit units name".split()
)
_NAME_STOP = frozenset("of the a an in to for per num number value amount is by at on".split())
_BOOL_STOP = _NAME_STOP | frozenset(
    "include use enable show with has should return get flag allow do only if whether".split()
)
_NEGATIONS = frozenset("no not without exclude excluding don't dont never disable skip".split())
#: "one" is left out: far more often a pronoun ("which one") than a count
_WORD_NUMBERS = {
    word: n
    for n, word in enumerate(
        "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
    if word != "_"
}
_WORD_NUMBERS |= dict(zip("thirty forty fifty sixty seventy eighty ninety".split(), range(30, 100, 10), strict=True))
_WORD_NUMBERS |= {"hundred": 100, "thousand": 1000}
_MONTH_NAMES = "january february march april may june july august september october november december".split()
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, 1)} | {m[:3]: i for i, m in enumerate(_MONTH_NAMES, 1)}
_MONTHS["sept"] = 9
#: zone-name cities that are also ordinary words or research stations, never read as a place
_CITY_STOP = frozenset(
    "christmas easter wake midway jersey chatham norfolk troll casey davis palmer mawson vostok macquarie "
    "rothera syowa mcmurdo".split()
)
#: common names iso3166.tab does not use ("Britain (UK)" is its name for GB)
_COUNTRY_ALIASES = {"united kingdom": "GB", "england": "GB", "scotland": "GB", "wales": "GB"}
_EXPRESSION_WORDS = frozenset({"expression", "expr", "formula", "equation", "polynomial", "function"})
_MATH_NAMES = frozenset({"sin", "cos", "tan", "sqrt", "log", "ln", "exp", "abs", "pi", "e"})


@dataclass(frozen=True)
class Span:
    value: Any
    start: int
    end: int


# ---- schema reading -------------------------------------------------------------------------


def words_of(name: str) -> list[str]:
    """snake_case, camelCase, kebab-case and dotted names as lowercase words."""
    spaced = re.sub(r"([a-z0-9])([A-Z])|([A-Za-z])([0-9])", r"\1\3 \2\4", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def primary_type(schema: dict[str, Any]) -> str | None:
    """The one non-null type of a parameter (`["number", "null"]` and `anyOf` with null included)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if len(kinds) == 1 else None
    if isinstance(kind, str):
        return kind
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict) and o.get("type") != "null"]
        if len(options) == 1:
            return primary_type(options[0])
    return None


def _options(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an Optional parameter (where enum, format and bounds live)."""
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict) and o.get("type") != "null"]
        if len(options) == 1:
            return {**schema, **options[0]}
    return schema


def _says(name: str, schema: dict[str, Any], words: Iterable[str], *, description: bool = True) -> bool:
    wanted = set(words)
    if wanted & {_stem(w) for w in words_of(name)} or wanted & set(words_of(name)):
        return True
    if not description:
        return False
    text = str(schema.get("description") or "").lower()
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in wanted)


def is_timezone(name: str, schema: dict[str, Any]) -> bool:
    if primary_type(schema) not in ("string", None):
        return False
    if re.search(r"time_?zone|\btz\b", name, re.IGNORECASE) or {"timezone", "tz"} & set(words_of(name)):
        return True
    return bool(re.search(r"\btime ?zone\b|\biana\b", str(schema.get("description") or ""), re.IGNORECASE))


def is_free_text(name: str, schema: dict[str, Any]) -> bool:
    """Whether the parameter takes a whole request: its name or description says query, text,
    question, prompt, message, input or content, and nothing makes it a value (an enum, a
    format, a pattern, or a name saying time zone, URL, path, identifier, SQL, expression...)."""
    schema = _options(schema)
    if primary_type(schema) not in ("string", None) or any(k in schema for k in ("enum", "const", "format", "pattern")):
        return False
    names = set(words_of(name))
    if names & NOT_FREE_WORDS or is_timezone(name, schema) or _says(name, schema, _EXPRESSION_WORDS, description=False):
        return False
    if names & FREE_TEXT_WORDS:
        return True
    description = str(schema.get("description") or "").lower()
    if re.search(r"\b(time ?zone|url|uri|path|identifier|id|sql|expression|formula|date|e-?mail)\b", description):
        return False
    return any(re.search(rf"\b{w}\b", description) for w in FREE_TEXT_WORDS)


def _kind(name: str, schema: dict[str, Any]) -> str:
    """How a parameter is read from text: const, enum, boolean, integer, number, date, date-time,
    time, uri, email, timezone, expression, string, or other (left to the LLM)."""
    if "const" in schema:
        return "const"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return "enum"
    kind = primary_type(schema)
    if kind in ("boolean", "integer", "number"):
        return kind
    if kind not in ("string", None):
        return "other"
    fmt = schema.get("format")
    if fmt in ("date", "date-time", "time", "email"):
        return str(fmt)
    if fmt in ("uri", "url", "uri-reference", "iri"):
        return "uri"
    if is_timezone(name, schema):
        return "timezone"
    description = str(schema.get("description") or "")
    if re.search(r"YYYY-MM-DD(?![ T]?hh)", description, re.IGNORECASE) and not re.search(r"hh:mm", description):
        return "date"
    if re.search(r"\bHH:MM\b(?!:SS)", description, re.IGNORECASE) and not re.search(r"YYYY", description):
        return "hh_mm"  # a clock time as the description spells it (mcp-server-time's convert_time)
    if words_of(name)[-1:] == ["date"] and not re.search(r"format|MM|DD|YY", description):
        # named for a date and saying nothing of its format (`add_days(date: str, days: int)`): on
        # BFCL's gold calls such parameters took an ISO date 6 times in 9 (other formats: 1)
        return "date"
    if _says(name, schema, {"url", "uri", "link"}, description=False):
        return "uri"
    if _says(name, schema, {"email"}, description=False):
        return "email"
    if _says(name, schema, _EXPRESSION_WORDS, description=False) or re.search(
        r"\b(mathematical )?(expression|formula|equation|polynomial)\b", description, re.IGNORECASE
    ):
        return "expression"
    return "string" if kind == "string" else "other"


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return True  # a schema we cannot check: its type was checked by the reader
    return True


# ---- finding values in text -----------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.\-/:−])([-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?)(?!\d|\.\d|/\d|:\d)")
_ISO_DATE = re.compile(r"\b(\d{4})[-/](\d{1,2})[-/](\d{1,2})\b")
_NAMED_DATE = re.compile(
    r"\b(?:(?P<m1>[A-Za-z]{3,9})\.? (?P<d1>\d{1,2})(?:st|nd|rd|th)?,? (?P<y1>\d{4})"
    r"|(?P<d2>\d{1,2})(?:st|nd|rd|th)? (?:of )?(?P<m2>[A-Za-z]{3,9})\.?,? (?P<y2>\d{4}))\b"
)
_DATE_TIME = re.compile(r"\b(\d{4}-\d{2}-\d{2})[T ](\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?(?![\d:])")
_CLOCK = re.compile(
    r"\b(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([ap])\.?m\.?)?(?![\d:])|\b(\d{1,2})\s*([ap])\.?m\.?\b", re.IGNORECASE
)
_URL = re.compile(r"\b(?:https?|ftp|wss?)://[^\s<>\"'`]+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|‘([^’]+)’|`([^`]+)`|(?<![\w'])'([^']+)'(?![\w'])")
_EXPRESSION_CHARS = re.compile(r"[0-9A-Za-z_.\s+\-*/^()%]+")


def _overlaps(start: int, end: int, taken: list[tuple[int, int]]) -> bool:
    return any(start < b and a < end for a, b in taken)


def _number_value(raw: str) -> int | float:
    raw = raw.replace(",", "").replace("−", "-")
    number = float(raw)
    return int(number) if number.is_integer() and not re.search(r"[.eE]", raw) else number


def find_numbers(text: str, taken: list[tuple[int, int]], *, words: bool = True) -> list[Span]:
    out = [
        Span(_number_value(m.group(1)), m.start(1), m.end(1))
        for m in _NUMBER.finditer(text)
        if not _overlaps(m.start(1), m.end(1), taken)
    ]
    if out or not words:  # words only where no digits are: "three sides of 5, 4 and 3 cm" has three values
        return out
    for m in re.finditer(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", text, re.IGNORECASE):
        if not _overlaps(m.start(), m.end(), taken):
            out.append(Span(_WORD_NUMBERS[m.group(1).lower()], m.start(), m.end()))
    return out


def _iso(year: int, month: int, day: int) -> str | None:
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


def find_dates(text: str) -> list[Span]:
    out: list[Span] = []
    for m in _ISO_DATE.finditer(text):
        value = _iso(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if value:
            out.append(Span(value, m.start(), m.end()))
    for m in _NAMED_DATE.finditer(text):
        month = _MONTHS.get((m.group("m1") or m.group("m2") or "").lower())
        day, year = m.group("d1") or m.group("d2"), m.group("y1") or m.group("y2")
        value = _iso(int(year), month, int(day)) if month else None
        if value:
            out.append(Span(value, m.start(), m.end()))
    return sorted(out, key=lambda s: s.start)


def find_date_times(text: str) -> list[Span]:
    out = []
    for m in _DATE_TIME.finditer(text):
        clock = m.group(2) if m.group(2).count(":") == 2 else m.group(2) + ":00"
        clock = clock if len(clock.split(":")[0]) == 2 else "0" + clock
        out.append(Span(f"{m.group(1)}T{clock}{m.group(3) or ''}", m.start(), m.end()))
    return out


def find_times(text: str) -> list[Span]:
    out = []
    for m in _CLOCK.finditer(text):
        if m.group(5) is not None:
            hour, minute, second, half = int(m.group(5)), 0, 0, m.group(6)
        else:
            hour, minute, second, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4)
        if half:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if half.lower() == "p" else 0)
        if hour < 24 and minute < 60 and second < 60:
            out.append(Span(f"{hour:02d}:{minute:02d}:{second:02d}", m.start(), m.end()))
    return out


def find_urls(text: str) -> list[Span]:
    return [
        Span(m.group(0).rstrip(".,;:!?)]"), m.start(), m.start() + len(m.group(0).rstrip(".,;:!?)]")))
        for m in _URL.finditer(text)
    ]


def find_emails(text: str) -> list[Span]:
    return [Span(m.group(0), m.start(), m.end()) for m in _EMAIL.finditer(text)]


def find_quoted(text: str) -> list[Span]:
    out = []
    for m in _QUOTED.finditer(text):
        group = next(i for i in range(1, 6) if m.group(i) is not None)
        if m.group(group).strip():
            out.append(Span(m.group(group).strip(), m.start(), m.end()))
    return out


def _implicit_products(expression: str) -> str:
    """`3x^2 + 2x` as Python: `3*x**2 + 2*x`."""
    out = expression.replace("^", "**").replace("−", "-")
    out = re.sub(r"(\d)\s*([A-Za-z(])", r"\1*\2", out)
    return re.sub(r"\)\s*([\w(])", r")*\1", out)


def is_arithmetic(expression: str) -> bool:
    """Whether the text parses as arithmetic over numbers, single-letter variables and the usual
    functions (sin, sqrt, log, ...): `ast.parse`, never evaluated."""
    try:
        tree = ast.parse(_implicit_products(expression), mode="eval")
    except (SyntaxError, ValueError):
        return False
    allowed = (
        ast.Expression,
        ast.BinOp,
        ast.UnaryOp,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.Call,
        ast.operator,
        ast.unaryop,
    )
    operators = 0
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return False
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            return False
        if isinstance(node, ast.Name) and len(node.id) > 1 and node.id not in _MATH_NAMES:
            return False
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _MATH_NAMES):
            return False
        operators += isinstance(node, (ast.BinOp, ast.Call))
    return operators > 0


def find_expressions(text: str) -> list[Span]:
    """The longest arithmetic spans: runs of digits, letters and operators that parse."""
    out: list[Span] = []
    for m in _EXPRESSION_CHARS.finditer(text):
        run = m.group(0)
        tokens = list(re.finditer(r"\S+", run))
        best: tuple[int, int] | None = None
        for i in range(len(tokens)):
            for j in range(len(tokens) - 1, i - 1, -1):
                a, b = tokens[i].start(), tokens[j].end()
                candidate = run[a:b].rstrip(".,")
                if (best is None or len(candidate) > best[1] - best[0]) and is_arithmetic(candidate):
                    best = (a, a + len(candidate))
                    break
        if best is not None:
            value = _implicit_products(run[best[0] : best[1]])
            out.append(Span(value, m.start() + best[0], m.start() + best[1]))
    return out


@functools.lru_cache(maxsize=1)
def _zone_tables() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(lowercase IANA name -> name, lowercase city -> zone, lowercase country -> zone), from
    the zoneinfo database's zone.tab and iso3166.tab; countries only where zone.tab lists one zone."""
    named = {z.lower(): z for z in zoneinfo.available_timezones() if "/" in z or z in ("UTC", "GMT")}
    zone_tab = iso_tab = ""
    roots = [Path(p) for p in zoneinfo.TZPATH]
    try:
        import importlib.resources

        roots.append(Path(str(importlib.resources.files("tzdata") / "zoneinfo")))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    for root in roots:
        try:
            zone_tab, iso_tab = (root / "zone.tab").read_text(), (root / "iso3166.tab").read_text()
            break
        except OSError:
            continue
    canonical: dict[str, list[str]] = {}
    for line in zone_tab.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and not line.startswith("#"):
            canonical.setdefault(fields[0], []).append(fields[2])
    cities: dict[str, str] = {}
    for zones in canonical.values():
        for zone in zones:
            city = zone.rsplit("/", 1)[-1].replace("_", " ").lower()
            if not zone.startswith("Antarctica/") and city not in _CITY_STOP:
                cities.setdefault(city, zone)
    countries: dict[str, str] = {}
    for line in iso_tab.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or line.startswith("#") or len(canonical.get(fields[0], [])) != 1:
            continue
        zone = canonical[fields[0]][0]
        name = fields[1].strip()
        for variant in {name, re.sub(r"\s*\(.*?\)", "", name), *re.findall(r"\((.*?)\)", name)}:
            if len(variant) >= 2 and variant.lower() not in _CITY_STOP:
                countries.setdefault(variant.lower(), zone)
    for alias, code in _COUNTRY_ALIASES.items():
        if len(canonical.get(code, [])) == 1:
            countries.setdefault(alias, canonical[code][0])
    return named, cities, countries


def find_timezones(text: str) -> list[Span]:
    named, cities, countries = _zone_tables()
    out: list[Span] = []
    taken: list[tuple[int, int]] = []
    lower = text.lower()
    for m in re.finditer(r"\b[A-Za-z]+(?:/[A-Za-z0-9_+\-]+)+|\b(?:UTC|GMT)\b", text):
        zone = named.get(m.group(0).lower())
        if zone:
            out.append(Span(zone, m.start(), m.end()))
            taken.append((m.start(), m.end()))
    for table in (cities, countries):
        for place in sorted(table, key=len, reverse=True):
            for m in re.finditer(rf"\b{re.escape(place)}\b", lower):
                if not _overlaps(m.start(), m.end(), taken):
                    out.append(Span(table[place], m.start(), m.end()))
                    taken.append((m.start(), m.end()))
    return sorted(out, key=lambda s: s.start)


def find_enum(text: str, values: list[Any]) -> list[Span]:
    out: list[Span] = []
    for value in values:
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            pattern, flags = rf"(?<![\w.]){re.escape(str(value))}(?![\w]|\.\d)", 0
        else:
            raw = str(value).strip()
            if not raw:
                continue
            spaced = re.sub(r"[_\-]+", " ", raw)
            alternatives = "|".join(re.escape(v) for v in {raw, spaced})
            pattern, flags = rf"(?<![\w]){'(?:' + alternatives + ')'}(?![\w])", (re.IGNORECASE if len(raw) > 1 else 0)
        out.extend(Span(value, m.start(), m.end()) for m in re.finditer(pattern, text, flags))
    return sorted(out, key=lambda s: s.start)


# ---- assigning values to parameters ---------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, int, int]]:
    return [(_stem(m.group(0).lower()), m.start(), m.end()) for m in re.finditer(r"[A-Za-z]+", text)]


def _anchor(name: str, span: Span, words: list[tuple[str, int, int]], window: int = 3) -> float:
    """How strongly the parameter's name words stand next to the value: for each name word, 1 /
    its distance in words squared (to the left; +0.5 to the right), summed: the word next to a
    value outweighs two words further off ("Dose for 12 kg": 12 is the weight in kg, not a dose)."""
    wanted = {_stem(w) for w in words_of(name)} - _NAME_STOP
    left = [w for w, _a, b in words if b <= span.start][-window:]
    right = [w for w, a, _b in words if a >= span.end][:window]
    score = 0.0
    for word in wanted:
        distances: list[float] = [len(left) - i for i, w in enumerate(left) if w == word]
        distances += [i + 1.5 for i, w in enumerate(right) if w == word]
        if distances:
            score += 1.0 / min(distances) ** 2
    return score


def assign(
    params: list[str],
    candidates: dict[str, list[Span]],
    required: set[str],
    text: str,
    *,
    distinct_values: bool = False,
) -> dict[str, Span]:
    """Values to parameters of one kind: mutual nearest by name words first, then in order when
    the counts of open values and open (required, else all) parameters agree."""
    words = _tokens(text)
    spans = sorted({s for p in params for s in candidates.get(p, [])}, key=lambda s: s.start)
    if distinct_values:
        first: dict[Any, Span] = {}
        for s in spans:
            first.setdefault(repr(s.value), s)
        spans = list(first.values())
    usable = {p: [s for s in spans if s in set(candidates.get(p, []))] for p in params}
    scores = {(p, s): _anchor(p, s, words) for p in params for s in usable[p]}
    done: dict[str, Span] = {}
    changed = True
    while changed:
        changed = False
        for p in params:
            if p in done:
                continue
            open_spans = [s for s in usable[p] if s not in done.values()]
            ranked = sorted(open_spans, key=lambda s: -scores[(p, s)])
            if (
                not ranked
                or scores[(p, ranked[0])] <= 0
                or (len(ranked) > 1 and scores[(p, ranked[1])] == scores[(p, ranked[0])])
            ):
                continue
            best = ranked[0]
            rivals = [scores[(q, best)] for q in params if q != p and q not in done and best in usable[q]]
            if all(r < scores[(p, best)] for r in rivals):
                done[p] = best
                changed = True
    _quantity_unit_is_the_source(params, spans, usable, text, done)
    open_params = [p for p in params if p not in done]
    open_spans = [s for s in spans if s not in done.values() and any(s in usable[p] for p in open_params)]
    for group in ([p for p in open_params if p in required], open_params):
        fits = len(group) == len(open_spans) and all(s in usable[p] for p, s in zip(group, open_spans, strict=True))
        if group and fits:
            done.update(zip(group, open_spans, strict=True))
            break
    return done


_SOURCE_WORDS = frozenset({"from", "source", "src", "original"})
_TARGET_WORDS = frozenset({"to", "target", "dest", "destination", "into"})


def _quantity_unit_is_the_source(
    params: list[str], spans: list[Span], usable: dict[str, list[Span]], text: str, done: dict[str, Span]
) -> None:
    """A from/to pair (`from_unit`, `to_unit`): the one value written right after a number is the
    quantity's own, so the source. "How many ml is 2 l?" converts 2 l into ml; in text order it
    went from ml to l (0.002, exact and wrong). Nothing changes when no value or several follow
    a number."""
    open_params = [p for p in params if p not in done]
    source = [p for p in open_params if set(words_of(p)) & _SOURCE_WORDS]
    target = [p for p in open_params if set(words_of(p)) & _TARGET_WORDS]
    if len(source) != 1 or len(target) != 1:
        return
    quantities = [s for s in spans if s not in done.values() and re.search(r"\d\s*$", text[: s.start])]
    if len(quantities) == 1 and quantities[0] in usable[source[0]]:
        done[source[0]] = quantities[0]


def _boolean(name: str, text: str) -> bool | None:
    wanted = [_stem(w) for w in words_of(name) if w not in _BOOL_STOP]
    if not wanted:
        return None
    words = _tokens(text)
    for i in range(len(words) - len(wanted) + 1):
        if [w for w, _a, _b in words[i : i + len(wanted)]] == wanted:
            before = {w for w, _a, _b in words[max(0, i - 3) : i]} | {
                w.lower() for w in re.findall(r"[\w']+", text[max(0, words[i][1] - 20) : words[i][1]])[-3:]
            }
            return not (before & _NEGATIONS)
    return None


_FINDERS = {
    "date": find_dates,
    "date-time": find_date_times,
    "time": find_times,
    "hh_mm": lambda text: [Span(s.value[:5], s.start, s.end) for s in find_times(text)],
    "uri": find_urls,
    "email": find_emails,
    "timezone": find_timezones,
}


def extract(schema: dict[str, Any] | None, text: str) -> tuple[dict[str, Any], list[str]]:
    """(arguments found in the text, each valid under its parameter's schema; the required
    parameters still missing). Optional parameters not found are simply absent."""
    props: dict[str, Any] = (schema or {}).get("properties") or {}
    required = {r for r in (schema or {}).get("required") or [] if r in props}
    params = {n: _options(s) if isinstance(s, dict) else {} for n, s in props.items()}
    kinds = {n: _kind(n, s) for n, s in params.items()}
    found: dict[str, Any] = {}
    # values that contain digits are claimed first, so no number is read from inside them
    protected = [
        (s.start, s.end) for f in (find_date_times, find_dates, find_times, find_urls, find_emails) for s in f(text)
    ]
    taken: list[tuple[int, int]] = []  # spans a parameter took

    def settle(names: list[str], spans_of: dict[str, list[Span]], distinct: bool = False) -> None:
        names = [n for n in names if n not in found]
        candidates = {
            n: [s for s in spans_of.get(n, []) if not _overlaps(s.start, s.end, taken) and _valid(s.value, params[n])]
            for n in names
        }
        for name, span in assign(names, candidates, required, text, distinct_values=distinct).items():
            found[name] = span.value
            taken.append((span.start, span.end))

    for name, spec in params.items():
        if kinds[name] == "const" and (name in required or find_enum(text, [spec["const"]])):
            found[name] = spec["const"]
    for kind, finder in _FINDERS.items():
        names = [n for n in params if kinds[n] == kind]
        if names:
            spans = finder(text)
            settle(names, {n: spans for n in names}, distinct=True)
    of_kind = {k: [n for n in params if kinds[n] == k] for k in ("enum", "expression", "string")}
    settle(of_kind["enum"], {n: find_enum(text, params[n]["enum"]) for n in of_kind["enum"]}, distinct=True)
    if of_kind["expression"]:
        expressions = find_expressions(text)
        settle(of_kind["expression"], {n: expressions for n in of_kind["expression"]})
    if of_kind["string"]:
        quoted = find_quoted(text)
        settle(of_kind["string"], {n: quoted for n in of_kind["string"]})
    for name in params:
        if kinds[name] == "boolean":
            value = _boolean(name, text)
            if value is not None:
                found[name] = value
    numeric = [n for n in params if kinds[n] in ("integer", "number")]
    if numeric:
        numbers = find_numbers(text, taken + protected)
        settle(numeric, {n: numbers for n in numeric})
    left = [n for n in props if n in required and n not in found]
    return found, left


#: kinds whose values name themselves: the job's question may give them when the subtask does not
NAMED_KINDS = frozenset({"const", "enum", "date", "date-time", "time", "hh_mm", "uri", "email", "timezone"})


def extract_named(schema: dict[str, Any] | None, names: list[str], question: str) -> dict[str, Any]:
    """Values for the parameters `names` (left open by the subtask) from the job's question, of
    the kinds that name themselves (a zone, a date, an enum value, a URL): "What time is it
    there?" in a question about Tokyo. Numbers, booleans and quoted spans in the question may
    belong to another subtask, so they are not taken from it."""
    props: dict[str, Any] = (schema or {}).get("properties") or {}
    named = [n for n in names if isinstance(props.get(n), dict) and _kind(n, _options(props[n])) in NAMED_KINDS]
    if not named:
        return {}
    found, _left = extract({"type": "object", "properties": {n: props[n] for n in named}, "required": named}, question)
    return found


# ---- checking what an LLM wrote ---------------------------------------------------------------


def trim_run_on(value: str, text: str) -> str:
    """A written string that starts with words of the text and then runs on into what no task
    says (a small model under a grammar writes until max_tokens: "rs6034464.125897-dff/mutation
    TypeGenomeProfiling,..."; a run of 20 characters without a space, a new line, code fences or
    braces) is cut where the text's words end. Prose that goes on ("San Francisco, CA" for "San
    Francisco", a longer search phrase) is left as written."""
    lower, value_lower = text.lower(), value.lower()
    size = 0
    while size < len(value) and value_lower[: size + 1] in lower:
        size += 1
    while 0 < size < len(value) and value[size - 1].isalnum() and value[size].isalnum():
        size -= 1  # back to the end of a whole word
    grounded = value[:size].rstrip(" ,.;:-/")
    if not grounded or not re.search(r"\S{20,}|\n|```|[{}]", value[size:]):
        return value
    whole = re.search(rf"(?<!\w){re.escape(grounded.lower())}(?!\w)", lower)
    return grounded if whole else value


# ---- checking that a call is about the task ---------------------------------------------------

#: a number that is part of a name or a unit, not a value: "m/s^2", "2x2", "type 2"
_NOT_A_VALUE = re.compile(r"\^\s*$|\b[Tt]ype\s*$")


@dataclass(frozen=True)
class TaskValue:
    raw: str  # as the text writes it
    value: Any  # normalised: ISO date, "HH:MM:SS", a number
    kind: str  # date, date-time, time, uri, email, number


#: the kinds of value a task names, the longest first (a date-time holds a date and a time)
_VALUE_KINDS = ("date-time", "date", "time", "uri", "email")
#: the parameter kinds (`_kind`) that can hold a value of each kind; any string can hold any value,
#: integers a date split into parts (BFCL's `get_hosts_per_day(day, month, year)`)
_HOLDERS = {
    "date-time": {"date-time", "integer"},
    "date": {"date", "date-time", "integer"},
    "time": {"time", "hh_mm", "date-time", "integer", "number"},
    "uri": {"uri"},
    "email": {"email"},
    "number": {"integer", "number", "expression", "date", "date-time", "time", "hh_mm"},
}


def task_values(text: str) -> list[TaskValue]:
    """The literal values a task names: dates, times, URLs, e-mails, and the numbers written in
    digits outside those and outside quotes. Quoted spans are not values here: on BFCL's gold
    calls they were mostly names a call may leave to a default ('HR' as a schema), and raised
    alarms on 23 of the 100 Java and 9 of the 50 JavaScript questions. Number words ("two") are
    left out: as often phrasing ("the two zones") as a value."""
    values: list[tuple[int, TaskValue]] = []
    taken = [(s.start, s.end) for s in find_quoted(text)]
    for kind in _VALUE_KINDS:
        for span in _FINDERS[kind](text):
            if not _overlaps(span.start, span.end, taken):
                taken.append((span.start, span.end))
                values.append((span.start, TaskValue(text[span.start : span.end], span.value, kind)))
    for span in find_numbers(text, taken, words=False):
        start, end = span.start, span.end
        if _NOT_A_VALUE.search(text[max(0, start - 6) : start]) or re.match(r"\s*x\s*\d", text[end : end + 4]):
            continue  # a unit's exponent, "type 2", or a "2x2" shape
        values.append((start, TaskValue(text[start:end], span.value, "number")))
    return [v for _start, v in sorted(values, key=lambda pair: pair[0])]


def parameters_taking(schema: dict[str, Any] | None, value: TaskValue) -> list[str]:
    """The tool's parameters that could hold the value (by `_kind`): none means no call of this
    tool can be about it."""
    props: dict[str, Any] = (schema or {}).get("properties") or {}
    out = []
    for name, spec in props.items():
        kind = _kind(name, _options(spec) if isinstance(spec, dict) else {})
        if kind in ("string", "other") or kind in _HOLDERS[value.kind]:
            out.append(name)
    return out


def fits_in_typed_parameters(schema: dict[str, Any] | None, text: str) -> bool:
    """Whether the task's values fill this tool's parameters by themselves: every required
    parameter is read from the text (`extract`), and no value the task names is left out.
    "What date is 45 days after 2025-01-10?" fits `add_days(date, days)`; it does not fit
    `weekday(text)`, which takes the whole text and would answer for the date alone."""
    if not task_values(text):
        return False
    found, left = extract(schema, text)
    return bool(found) and not left and not values_not_carried(text, found)


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)  # a key carries a value too: {'math': 90} for "'math':90"
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _same_number(a: float, b: float) -> bool:
    """Equal up to sign and a power of ten: "5%" as 0.05, "8.5 million" as 8500000, "50 mH" as
    0.05, "112.07 W" as -112.07."""
    a, b = abs(a), abs(b)
    if a == 0 or b == 0:
        return a == b
    ratio = math.log10(b / a)
    return abs(ratio - round(ratio)) < 1e-9 and abs(ratio) <= 9


def _carried(task_value: TaskValue, strings: list[str], numbers: list[float]) -> bool:
    raw, value = task_value.raw, task_value.value
    needles = {raw.lower(), str(value).lower()}
    if any(n in s for s in strings for n in needles):
        return True
    digits = numbers + [float(d) for s in strings for d in re.findall(r"\d+(?:\.\d+)?", s)]
    if isinstance(value, int | float):
        parts = raw.split(",")  # "200,300,400,500" is a list more often than 200 billion
        return any(_same_number(float(value), n) for n in digits) or (
            len(parts) > 1 and all(float(p) in digits for p in parts if p.strip().isdigit())
        )
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", value):
        # a date written another way ("05-12-2022", "16/03/2024"), or a day the task counts from
        # ("today is 2023-04-25", the call asks for 2023-04-27): its year and month are there
        year, month = int(value[:4]), int(value[5:7])
        return year in digits and month in digits
    if isinstance(value, str) and re.fullmatch(r"\d{2}:\d{2}:\d{2}", value):
        hour, minute = int(value[:2]), int(value[3:5])  # "6:30 PM" as hours=6, minutes=30
        return any(d % 12 == hour % 12 for d in digits) and (minute == 0 or minute in digits)
    return False


def values_not_carried(text: str, arguments: dict[str, Any]) -> list[TaskValue]:
    """The task's literal values (`task_values`) that no argument carries, as the text writes
    them. A call that drops a value the task names answers another question: "What weekday is
    2025-12-25?" sent to `get_current_time(timezone)` returns today's time, exactly and wrongly.

    Lenient on purpose, since a false alarm refuses a good call: a value counts as carried when
    any argument contains it as the text writes it or normalised, a number also up to sign and a
    power of ten, a date by its year and month, a time by its hour and minute. Measured on
    BFCL's gold calls with `benchmarks/value_coverage.py`."""
    leaves = [v for v in _leaves(arguments) if v is not None and not isinstance(v, bool)]
    strings = [str(v).lower() for v in leaves if not isinstance(v, int | float)]
    numbers = [float(v) for v in leaves if isinstance(v, int | float)]
    return [v for v in task_values(text) if not _carried(v, strings, numbers)]
