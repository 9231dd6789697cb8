"""Tool arguments read from the text before any LLM (fabric/interop/tool_arguments.py), and the
gateway's filler around it: what the text states is filled and validated, the LLM writes only
what is left, and a free-text shortcut applies only to free-text parameters.

The re-ask tests use a ScriptedLLM (a stand-in for unit tests of the filler's logic), whose
answers depend on the prompt and the schema it is given."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, Tool

from agents.sdk import TaskFailed
from fabric.interop.mcp_gateway import MCPGateway, fill_arguments
from fabric.interop.specs import MCPConfig
from fabric.interop.tool_arguments import (
    extract,
    find_expressions,
    fits_in_typed_parameters,
    is_arithmetic,
    is_free_text,
    parameters_taking,
    task_values,
    trim_run_on,
    values_not_carried,
)
from fabric.llm.base import ChatMessage
from fabric.llm.scripted import ScriptedLLM
from fabric.messages import TaskRequest
from tests.conftest import make_settings


def obj(required: list[str] | None = None, **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required}


TIMEZONE = obj(timezone={"type": "string"})


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("What is the current time in Asia/Tokyo?", "Asia/Tokyo"),
        ("what time is it in asia/tokyo", "Asia/Tokyo"),
        ("What time is it in Tokyo right now?", "Asia/Tokyo"),
        ("Current time in Japan", "Asia/Tokyo"),
        ("time in New York", "America/New_York"),
        ("What's the time in the UK?", "Europe/London"),
        ("the time in UTC", "UTC"),
    ],
)
def test_time_zones_from_names_cities_and_countries(text: str, zone: str) -> None:
    assert extract(TIMEZONE, text) == ({"timezone": zone}, [])


def test_a_time_zone_that_the_text_does_not_settle_is_left_for_the_llm() -> None:
    assert extract(TIMEZONE, "What is the current time?") == ({}, ["timezone"])
    assert extract(TIMEZONE, "the time in China") == ({}, ["timezone"])  # two zones: not a guess
    assert extract(TIMEZONE, "the time in New Jersey") == ({}, ["timezone"])  # not Europe/Jersey
    two = obj(
        from_tz={"type": "string", "description": "source time zone"},
        to_tz={"type": "string", "description": "target time zone"},
    )
    assert extract(two, "Convert 9:00 from Tokyo to Paris time") == (
        {"from_tz": "Asia/Tokyo", "to_tz": "Europe/Paris"},
        [],
    )


def test_enum_values_named_in_the_text() -> None:
    schema = obj(["city"], city={"type": "string"}, unit={"type": "string", "enum": ["celsius", "fahrenheit"]})
    assert extract(schema, "Weather in Paris in Fahrenheit") == ({"unit": "fahrenheit"}, ["city"])
    assert extract(schema, "Weather in Paris") == ({}, ["city"])  # an optional enum not named stays absent
    assert extract(schema, "celsius or fahrenheit?")[0] == {}  # two named: not a guess
    modes = obj(mode={"type": "string", "enum": ["fast_scan", "deep_scan"]})
    assert extract(modes, "run a deep scan of the disk") == ({"mode": "deep_scan"}, [])
    const = obj(version={"const": 2}, name={"type": "string"})
    assert extract(const, "hello")[0] == {"version": 2}


def test_numbers_within_bounds_go_to_the_parameter_named_next_to_them() -> None:
    triangle = obj(["base", "height"], base={"type": "integer"}, height={"type": "integer"}, unit={"type": "string"})
    assert extract(triangle, "Area of a triangle with a base of 10 units and height of 5 units.")[0] == {
        "base": 10,
        "height": 5,
    }
    assert extract(triangle, "Area of a triangle with height 7 and base 3")[0] == {"base": 3, "height": 7}
    dose = obj(
        ["weight_kg", "mg_per_kg"],
        weight_kg={"type": "number"},
        mg_per_kg={"type": "number"},
        max_single_dose_mg={"anyOf": [{"type": "number"}, {"type": "null"}]},
    )
    assert extract(dose, "Dose for 12 kg at 15 mg/kg")[0] == {"weight_kg": 12, "mg_per_kg": 15}
    assert extract(dose, "Dose for 20 kg at 10 mg/kg, max 150 mg")[0] == {
        "weight_kg": 20,
        "mg_per_kg": 10,
        "max_single_dose_mg": 150,
    }
    bounded = obj(count={"type": "integer", "minimum": 1, "maximum": 10})
    assert extract(bounded, "show 50 rows") == ({}, ["count"])  # out of bounds: not taken
    assert extract(bounded, "show five rows")[0] == {"count": 5}
    assert extract(bounded, "show 2.5 rows") == ({}, ["count"])  # not an integer
    money = obj(amount={"type": "number"})
    assert extract(money, "transfer $1,250.50 now")[0] == {"amount": 1250.5}
    assert extract(money, "on 2024-03-01") == ({}, ["amount"])  # no number from inside a date


def test_booleans_from_their_name_words_and_negation() -> None:
    schema = obj([], detailed={"type": "boolean"}, include_images={"type": "boolean"})
    assert extract(schema, "a detailed report with images")[0] == {"detailed": True, "include_images": True}
    assert extract(schema, "a short report, not detailed, without images")[0] == {
        "detailed": False,
        "include_images": False,
    }
    assert extract(schema, "a report")[0] == {}


def test_dates_times_uris_and_emails_by_format() -> None:
    schema = obj(day={"type": "string", "format": "date"}, days={"type": "integer"})
    for text in (
        "30 days after 2024-03-01",
        "30 days after March 1, 2024",
        "30 days after 1st March 2024",
        "30 days after 2024/3/1",
    ):
        assert extract(schema, text) == ({"day": "2024-03-01", "days": 30}, []), text
    described = obj(start={"type": "string", "description": "Start date in YYYY-MM-DD format"})
    assert extract(described, "from Jan 5 2023 on")[0] == {"start": "2023-01-05"}
    assert extract(described, "from 2023-02-30 on") == ({}, ["start"])  # not a date
    when = obj(at={"type": "string", "format": "time"}, stamp={"type": "string", "format": "date-time"})
    assert extract(when, "remind me at 3:30 pm, logged 2024-03-01T08:15Z")[0] == {
        "at": "15:30:00",
        "stamp": "2024-03-01T08:15:00Z",
    }
    web = obj(url={"type": "string", "format": "uri"}, to={"type": "string", "format": "email"})
    assert extract(web, "Send https://example.org/a?b=1. to ann@example.org, please")[0] == {
        "url": "https://example.org/a?b=1",
        "to": "ann@example.org",
    }


def test_a_clock_time_the_description_spells_hh_mm() -> None:
    """mcp-server-time's convert_time, as it lists itself: no `format`, "HH:MM" in words."""
    schema = {
        "type": "object",
        "properties": {
            "source_timezone": {
                "type": "string",
                "description": "Source IANA timezone name (e.g., 'America/New_York')",
            },
            "time": {"type": "string", "description": "Time to convert in 24-hour format (HH:MM)"},
            "target_timezone": {"type": "string", "description": "Target IANA timezone name (e.g., 'Asia/Tokyo')"},
        },
        "required": ["source_timezone", "time", "target_timezone"],
    }
    found, left = extract(schema, "Convert 15:00 from Europe/London to America/New_York time")
    assert found == {"source_timezone": "Europe/London", "time": "15:00", "target_timezone": "America/New_York"}
    assert left == []
    assert extract(schema, "What is 3 pm in London in Tokyo time?")[0]["time"] == "15:00"


def test_quoted_spans_fill_string_parameters() -> None:
    schema = obj(title={"type": "string"}, author={"type": "string"})
    assert extract(schema, "Find the book \"War and Peace\" by 'Leo Tolstoy'")[0] == {
        "title": "War and Peace",
        "author": "Leo Tolstoy",
    }
    assert extract(obj(title={"type": "string"}), "Find the book War and Peace, it's long") == ({}, ["title"])


def test_arithmetic_expressions_are_parsed_never_evaluated() -> None:
    schema = obj(function={"type": "string", "description": "The function to differentiate"}, x={"type": "integer"})
    assert extract(schema, "Derivative of 3x^2 + 2x - 1 at x = 2.")[0] == {"function": "3*x**2 + 2*x - 1", "x": 2}
    assert is_arithmetic("sqrt(16) + 2^3") and not is_arithmetic("__import__('os').system('ls')")
    assert not is_arithmetic("hello world") and not is_arithmetic("42")
    assert [s.value for s in find_expressions("What is (12 + 3) * 4?")] == ["(12 + 3) * 4"]


def test_free_text_is_what_names_and_descriptions_say() -> None:
    assert is_free_text("query", {"type": "string"})
    assert is_free_text("text", {"type": "string"})
    assert is_free_text("q", {"type": "string", "description": "The search query"})
    assert is_free_text("prompt", {"anyOf": [{"type": "string"}, {"type": "null"}]})
    values: list[tuple[str, dict[str, Any]]] = [
        ("timezone", {"type": "string", "description": "the time zone, as text"}),
        ("url", {"type": "string", "description": "the text of the link"}),
        ("message_id", {"type": "string"}),
        ("sql", {"type": "string", "description": "the query to run"}),
        ("expression", {"type": "string", "description": "input to evaluate"}),
        ("path", {"type": "string", "description": "file content location"}),
        ("query", {"type": "string", "enum": ["a", "b"]}),
        ("name", {"type": "string"}),
        ("count", {"type": "integer", "description": "how many query results"}),
    ]
    for name, schema in values:
        assert not is_free_text(name, schema), name


# ---- the filler around it --------------------------------------------------------------------


def tool(name: str, schema: dict[str, Any], description: str = "") -> Tool:
    return Tool(name=name, description=description, input_schema=schema)


def test_the_llm_writes_only_what_is_left_and_sees_the_values_found() -> None:
    convert = tool(
        "convert_units",
        obj(
            value={"type": "number"},
            from_unit={"type": "string", "description": "unit"},
            to_unit={"type": "string", "description": "target unit"},
        ),
    )
    llm = ScriptedLLM(lambda messages, schema: json.dumps({"from_unit": "lb", "to_unit": "kg", "value": 99}))
    filled = asyncio.run(fill_arguments(convert, "Convert 10 lb to kilograms", llm, 2))
    assert filled.arguments == {"value": 10, "from_unit": "lb", "to_unit": "kg"}  # the text's 10, not the LLM's 99
    assert filled.extracted == ["value"] and llm.call_count == 1
    call = llm.calls[0]
    assert call.json_schema is not None and set(call.json_schema["properties"]) == {"from_unit", "to_unit"}
    assert '"value": 10' in call.messages[-1].content and "- to_unit (string, required): target unit" in (
        call.messages[-1].content
    )
    # nothing left: no LLM at all
    silent = ScriptedLLM([])
    assert asyncio.run(fill_arguments(tool("t", TIMEZONE), "time in Tokyo", silent, 2)).arguments == {
        "timezone": "Asia/Tokyo"
    }
    assert silent.call_count == 0


def test_the_whole_text_goes_only_to_a_free_text_parameter() -> None:
    search = tool("search", obj(query={"type": "string"}))
    filled = asyncio.run(fill_arguments(search, "cheap flights to Rome", None, 2))
    assert filled.arguments == {"query": "cheap flights to Rome"} and filled.whole_text
    with pytest.raises(TaskFailed, match="needs structured arguments and this gateway has no LLM to write timezone"):
        asyncio.run(fill_arguments(tool("current_time", TIMEZONE), "What is the current time?", None, 2))
    assert asyncio.run(fill_arguments(tool("ping", {"type": "object"}), "ping", None, 2)).arguments == {}


def test_a_refusal_is_rewritten_by_the_llm_seeing_the_tools_message() -> None:
    def writer(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        assert schema is not None and set(schema["properties"]) == {"timezone"}
        return json.dumps({"timezone": "Asia/Tokyo"})

    llm = ScriptedLLM(writer)
    filled = asyncio.run(
        fill_arguments(
            tool("current_time", TIMEZONE),
            "time in Tokio",
            llm,
            2,
            refused=({"timezone": "Tokio"}, "Invalid timezone 'Tokio'"),
        )
    )
    assert filled.arguments == {"timezone": "Asia/Tokyo"} and filled.extracted == []
    prompt = llm.calls[0].messages[-1].content
    assert '{"timezone": "Tokio"}' in prompt and "The tool answered: Invalid timezone 'Tokio'" in prompt


def test_a_string_that_runs_on_past_the_task_is_cut_at_the_tasks_words() -> None:
    text = "Find the type of gene mutation of SNP ID rs6034464."
    assert trim_run_on("rs6034464.125897-dff/mutationTypeGenomeProfiling", text) == "rs6034464"
    assert trim_run_on("rs6034464", text) == "rs6034464"
    assert trim_run_on("San Francisco, CA", "weather in San Francisco") == "San Francisco, CA"  # adds a little
    assert trim_run_on("gene mutations and more and more words", text) == "gene mutations and more and more words"
    assert trim_run_on("SNP ID rs6034464\n```python\ndef find(", text) == "SNP ID rs6034464"
    assert trim_run_on("USD", text) == "USD"

    def runs_on(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        return json.dumps({"snp_id": "rs6034464.125897-dff/mutationTypeGenomeProfiling"})

    lookup = tool("mutation_type", obj(snp_id={"type": "string", "description": "The SNP identifier"}))
    llm = ScriptedLLM(runs_on)
    assert asyncio.run(fill_arguments(lookup, text, llm, 0)).arguments == {"snp_id": "rs6034464"}
    sent = llm.calls[0].json_schema
    assert sent is not None and sent["properties"]["snp_id"]["minLength"] == 1  # the grammar writes no ""


class RefusingSession:
    """Stands in for the MCP client session of a server built on another SDK, which refuses bad
    arguments as a protocol error (invalid params) instead of an isError result."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def call_tool(self, name: str, args: dict[str, Any], read_timeout_seconds: float = 0) -> CallToolResult:
        self.sent.append(args)
        if args.get("timezone") != "Asia/Tokyo":
            raise MCPError(INVALID_PARAMS, f"unknown time zone {args.get('timezone')!r}")
        return CallToolResult(content=[TextContent(type="text", text="12:00:00+09:00 (Asia/Tokyo)")])


def test_invalid_params_are_re_asked_like_error_results(tmp_path: Path) -> None:
    def writer(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        told = "unknown time zone 'Tokio'" in messages[-1].content
        return json.dumps({"timezone": "Asia/Tokyo" if told else "Tokio"})

    gateway = MCPGateway(
        MCPConfig(stdio="unused", argument_retries=1),
        make_settings("mqtt://127.0.0.1:1883", tmp_path),
        backend=ScriptedLLM(writer),
    )
    session = RefusingSession()
    gateway.tools = {"current_time": tool("current_time", TIMEZONE)}
    gateway._client = session  # type: ignore[assignment]
    request = TaskRequest(
        task_id="t-1",
        task_kind="draft",
        agent_id="tools",
        input={"question": "time in Tokio?", "subtask": "time in Tokio?"},
        deadline_at=time.time() + 30,
    )
    out, usage = asyncio.run(gateway.draft(request, ["current_time"]))
    assert session.sent == [{"timezone": "Tokio"}, {"timezone": "Asia/Tokyo"}]
    assert out["answer"] == "12:00:00+09:00 (Asia/Tokyo)" and out["exact"] is True and usage.calls == 2
    gateway.config = gateway.config.model_copy(update={"argument_retries": 0})
    session.sent.clear()
    with pytest.raises(TaskFailed, match="refused the call of current_time: unknown time zone 'Tokio'"):
        asyncio.run(gateway.draft(request, ["current_time"]))
    assert session.sent == [{"timezone": "Tokio"}]


def test_the_jobs_question_names_what_the_subtask_leaves_open() -> None:
    question = "I land in Tokyo at 6 pm with 2 bags. What time is it there now?"
    current_time = tool("current_time", TIMEZONE)
    filled = asyncio.run(fill_arguments(current_time, "What time is it there now?", None, 2, question=question))
    assert filled.arguments == {"timezone": "Asia/Tokyo"}
    # a number in the question may belong to another subtask: it is not taken from there
    count = tool("count_bags", obj(bags={"type": "integer"}))
    with pytest.raises(TaskFailed, match="no LLM to write bags"):
        asyncio.run(fill_arguments(count, "How many bags?", None, 2, question=question))


@pytest.mark.parametrize(
    ("text", "arguments", "dropped"),
    [
        ("What weekday is 2025-12-25?", {"timezone": "UTC"}, ["2025-12-25"]),
        ("What weekday is 2025-12-25?", {"text": "What weekday is 2025-12-25?"}, []),
        # the same value, written as the tool wants it
        ("Convert 3pm in New York to Tokyo time", {"time": "15:00", "source_timezone": "America/New_York"}, []),
        ("Book from May 12, 2022 for 3 days", {"start_date": "05-12-2022", "days": 3}, []),
        ("Tax of 5% on $150,000", {"rate": 0.05, "amount": 150000}, []),
        ("A population of 8.5 million", {"population": 8500000}, []),
        ("At 112.0740 W", {"longitude": -112.074}, []),
        ("At 6:30 PM", {"hours": 6, "minutes": 30}, []),
        ("cash_flows=[200,300,400,500]", {"cash_flows": [200, 300, 400, 500]}, []),
        ("Update 'name':'John Doe' for user 43523", {"user_id": 43523, "info": {"name": "John Doe"}}, []),
        # a number that names a shape or a unit is no value; quoted names may be left to defaults
        ("Accelerating at 4 m/s^2 over a 2x2 grid", {"acceleration": 4}, []),
        ("Find the view 'EmployeeView' in schema 'HR'", {"view": "EmployeeView"}, []),
        # what a call drops is named as the text writes it
        ("The weather in Paris for the next 5 days from 2024-03-01", {"city": "Paris"}, ["5", "2024-03-01"]),
        ("Fetch https://example.org/a and mail ops@example.org", {"url": "https://example.org/a"}, ["ops@example.org"]),
    ],
)
def test_a_call_must_carry_the_values_the_task_names(text: str, arguments: dict[str, Any], dropped: list[str]) -> None:
    assert [v.raw for v in values_not_carried(text, arguments)] == dropped


def test_a_value_no_parameter_can_take_is_known_before_any_call() -> None:
    (date,) = task_values("What weekday is 2025-12-25?")
    assert date.kind == "date" and date.value == "2025-12-25"
    assert parameters_taking(TIMEZONE, date) == []  # a zone cannot hold a date
    hh_mm = {"type": "string", "description": "Time in 24-hour format (HH:MM)"}
    clock = obj(source_timezone={"type": "string"}, time=hh_mm)
    assert parameters_taking(clock, date) == []
    assert parameters_taking(obj(date={"type": "string", "format": "date"}), date) == ["date"]
    assert parameters_taking(obj(note={"type": "string"}), date) == ["note"]  # any plain string can
    (number,) = task_values("in 10 days")
    assert parameters_taking(obj(days={"type": "integer"}, zone={"type": "string", "enum": ["a"]}), number) == ["days"]


def test_the_tool_picked_is_one_that_can_take_the_tasks_values(tmp_path: Path) -> None:
    """mcp-server-time's two tools: "3pm" rules out the one whose only parameter is a zone, with
    no embedding needed; a task no tool can carry leaves the choice to similarity as before."""
    gateway = MCPGateway(MCPConfig(stdio="unused"), make_settings("mqtt://127.0.0.1:1883", tmp_path))
    hh_mm = {"type": "string", "description": "Time to convert in 24-hour format (HH:MM)"}
    convert = obj(source_timezone={"type": "string"}, time=hh_mm, target_timezone={"type": "string"})
    gateway.tools = {
        "get_current_time": tool("get_current_time", TIMEZONE),
        "convert_time": tool("convert_time", convert),
    }
    chosen, usage = asyncio.run(gateway.pick_tool("Convert 3pm New York time to Tokyo time", None))
    assert chosen.name == "convert_time" and usage.calls == 0
    only, _ = asyncio.run(gateway.pick_tool("Convert 3pm New York time to Tokyo time", ["get_current_time"]))
    assert only.name == "get_current_time"  # the one allowed tool stays; the draft then names what it cannot take


def test_a_tool_fits_when_the_tasks_values_fill_its_own_parameters() -> None:
    add_days = obj(date={"type": "string", "title": "Date"}, days={"type": "integer"})
    weekday = obj(text={"type": "string"})
    assert fits_in_typed_parameters(add_days, "What date is 45 days after 2025-01-10?")
    assert not fits_in_typed_parameters(weekday, "What date is 45 days after 2025-01-10?")  # the whole text
    assert not fits_in_typed_parameters(add_days, "What weekday is 2025-12-25?")  # days: nothing to fill it
    assert not fits_in_typed_parameters(add_days, "What date is it in 45 days?")  # no date for `date`
    assert not fits_in_typed_parameters(add_days, "What date is it?")  # no values at all


class RecordingSession:
    """Stands in for an MCP client session: records what is sent, answers with the arguments."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def call_tool(self, name: str, args: dict[str, Any], read_timeout_seconds: float = 0) -> CallToolResult:
        self.sent.append(args)
        return CallToolResult(content=[TextContent(type="text", text=json.dumps(args))])


def test_arguments_that_leave_out_a_value_go_back_to_the_llm_before_any_call(tmp_path: Path) -> None:
    def forgets_the_date(messages: Sequence[ChatMessage], schema: dict[str, Any] | None) -> str:
        told = "the task names 2024-03-01, which none of these arguments carries" in messages[-1].content
        return json.dumps({"city": "Paris", "when": "2024-03-01" if told else "today"})

    gateway = MCPGateway(
        MCPConfig(stdio="unused", argument_retries=1),
        make_settings("mqtt://127.0.0.1:1883", tmp_path),
        backend=ScriptedLLM(forgets_the_date),
    )
    session = RecordingSession()
    gateway.tools = {"weather": tool("weather", obj(city={"type": "string"}, when={"type": "string"}))}
    gateway._client = session  # type: ignore[assignment]
    text = "Weather in Paris on 2024-03-01"
    request = TaskRequest(
        task_id="t-1",
        task_kind="draft",
        agent_id="tools",
        input={"question": text, "subtask": text},
        deadline_at=time.time() + 30,
    )
    out, usage = asyncio.run(gateway.draft(request, None))
    assert session.sent == [{"city": "Paris", "when": "2024-03-01"}]  # "today" was never sent
    assert out["arguments"] == {"city": "Paris", "when": "2024-03-01"} and usage.calls == 2


def test_the_unit_written_after_the_quantity_is_the_source() -> None:
    units = {"type": "string", "enum": ["kg", "lb", "l", "ml", "ft", "cm"]}
    convert = obj(value={"type": "number"}, from_unit=units, to_unit=units)
    assert extract(convert, "How many ml is 2 l?") == ({"value": 2, "from_unit": "l", "to_unit": "ml"}, [])
    assert extract(convert, "Convert 5 ft to cm") == ({"value": 5, "from_unit": "ft", "to_unit": "cm"}, [])
    assert extract(convert, "Convert 70 kg to pounds") == ({"value": 70, "from_unit": "kg"}, ["to_unit"])
    assert extract(convert, "Convert ml to l: 250") == ({"value": 250, "from_unit": "ml", "to_unit": "l"}, [])
