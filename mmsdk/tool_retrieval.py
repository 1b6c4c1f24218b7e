"""Tool retrieval: with more tools than a small model can read in its prompt, the bundled embedder
picks the few whose descriptions are nearest the request, and only those are shown (and allowed by
the call grammar)."""
from .tool_schema import ToolSpec

MAX_TOOLS = 8     # more than this and the prompt shows only the nearest ones
PICK = 5          # how many retrieval keeps


def tool_text(spec: ToolSpec) -> str:
    """What a tool is embedded as: its name in words, its description, its parameters'."""
    props = spec.parameters.get("properties", {})
    params = "; ".join(f"{name.replace('_', ' ')}: {p.get('description', '')}".strip(": ") for name, p in props.items())
    return f"{spec.name.replace('_', ' ')}: {spec.description}" + (f" ({params})" if params else "")


def request_text(messages: list[dict]) -> str:
    """The request the tools should serve: the last user message's text."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content") or ""
            if isinstance(content, str):
                return content
            return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def select_tools(specs: list[ToolSpec], messages: list[dict], *, keep=(), k: int = PICK, embed=None) -> list[ToolSpec]:
    """`specs` when they are few (<= MAX_TOOLS); otherwise the `k` nearest the last user message by
    the embedder's cosine, plus those named in `keep` (a forced tool_choice, tools already called in
    the conversation), in their given order."""
    if len(specs) <= MAX_TOOLS:
        return list(specs)
    query = request_text(messages)
    kept = {s.name for s in specs if s.name in set(keep)}
    if query.strip():
        if embed is None:
            from .embedder import default_embedder

            embed = default_embedder()
        vectors = embed([query] + [tool_text(s) for s in specs])
        scores = vectors[1:] @ vectors[0]
        kept |= {specs[i].name for i in sorted(range(len(specs)), key=lambda i: -scores[i])[:k]}
    else:  # nothing to match on: the first ones
        kept |= {s.name for s in specs[:k]}
    return [s for s in specs if s.name in kept]


def called_tools(messages: list[dict]) -> set[str]:
    """Names of the tools the conversation already called (their results must still parse)."""
    names = set()
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        for call in msg.get("tool_calls") or ():
            name = getattr(call, "name", None)
            if name is None and isinstance(call, dict):
                name = call.get("function", call).get("name")
            if name:
                names.add(name)
        if msg.get("role") == "tool" and msg.get("name"):
            names.add(msg["name"])
    return names
