"""Tool retrieval with the real bundled embedder: of 20 tools, the prompt shows the few nearest the
request, the one the request needs among them; a forced or already-called tool stays offered."""
import pytest

from mmsdk import structured
from mmsdk.tool_retrieval import MAX_TOOLS, PICK, select_tools
from mmsdk.tool_schema import ToolSpec
from mmsdk.types import ToolCall

_TOOLS = {
    "get_weather": ("Current weather and temperature forecast for a city.", "city"),
    "convert_currency": ("Convert an amount of money from one currency to another at today's exchange rate.", "amount"),
    "send_email": ("Send an email message to a recipient address.", "to"),
    "set_alarm": ("Set an alarm clock to ring at a given time.", "time"),
    "play_music": ("Play a song or playlist by an artist.", "song"),
    "translate_text": ("Translate text into another language.", "text"),
    "search_flights": ("Find flights between two airports on a date.", "origin"),
    "book_restaurant": ("Reserve a table at a restaurant.", "restaurant"),
    "get_stock_price": ("Latest share price of a company's stock by ticker symbol.", "ticker"),
    "calculate_tip": ("Work out the tip for a restaurant bill.", "bill"),
    "turn_on_lights": ("Switch the smart lights in a room on or off.", "room"),
    "create_calendar_event": ("Add a meeting or appointment to the calendar.", "title"),
    "get_directions": ("Driving or walking directions from one place to another.", "destination"),
    "define_word": ("Dictionary definition of an English word.", "word"),
    "roll_dice": ("Roll dice and return the numbers.", "sides"),
    "order_taxi": ("Call a taxi to pick you up at an address.", "address"),
    "check_package": ("Track a parcel delivery by its tracking number.", "tracking_number"),
    "set_thermostat": ("Set the home heating thermostat to a temperature.", "degrees"),
    "read_news": ("Today's news headlines on a topic.", "topic"),
    "count_calories": ("Nutrition facts and calories of a food.", "food"),
}
SPECS = [ToolSpec(name, desc, {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]})
         for name, (desc, arg) in _TOOLS.items()]

REQUESTS = [
    ("Will it rain in Lisbon tomorrow?", "get_weather"),
    ("How many euros is 40 US dollars?", "convert_currency"),
    ("Wake me up at 6:30 tomorrow morning", "set_alarm"),
    ("Where is my parcel 1Z999AA10123456784?", "check_package"),
    ("What is Apple trading at right now?", "get_stock_price"),
    ("How do I say good night in Italian?", "translate_text"),
]


@pytest.mark.parametrize("request_text, needed", REQUESTS)
def test_the_needed_tool_is_among_the_few_shown(request_text, needed):
    picked = select_tools(SPECS, [{"role": "user", "content": request_text}])
    assert len(picked) == PICK < len(SPECS)
    assert needed in [s.name for s in picked]


def test_few_tools_are_all_shown():
    few = SPECS[:MAX_TOOLS]
    assert select_tools(few, [{"role": "user", "content": "Will it rain in Lisbon?"}]) == few


def test_chat_plan_prompts_and_parses_only_the_picked_tools_and_keeps_called_ones():
    messages = [{"role": "user", "content": "Find me a flight from Oslo to Rome"},
                {"role": "assistant", "content": "", "tool_calls": [ToolCall("roll_dice", {"sides": "6"})]},
                {"role": "tool", "name": "roll_dice", "content": "4"},
                {"role": "user", "content": "Will it rain in Lisbon tomorrow?"}]
    plan = structured.plan(None, messages, tools=SPECS, constrained=False)
    shown = {s.name for s in plan.specs}
    assert "get_weather" in shown and "roll_dice" in shown and len(shown) <= PICK + 1
    system = plan.messages[0]["content"]
    assert "def get_weather(" in system and "def roll_dice(" in system
    assert all(f"def {s.name}(" not in system for s in SPECS if s.name not in shown)
    forced = structured.plan(None, messages[:1], tools=SPECS, tool_choice="count_calories", constrained=False)
    assert "count_calories" in {s.name for s in forced.specs}
