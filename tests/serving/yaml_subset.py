"""A small YAML reader for the block-style subset used in serving/deploy/ (PyYAML is not a
project dependency): mappings, sequences, plain/quoted scalars, `[a, b]` flow lists,
`|` literal blocks, comments and `---` documents. Anything else raises ValueError."""

import re


def _scalar(text: str):
    text = text.strip()
    if text.startswith(("'", '"')):
        if len(text) < 2 or text[-1] != text[0]:
            raise ValueError(f"unterminated quoted scalar: {text!r}")
        return text[1:-1]
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"unterminated flow list: {text!r}")
        inner = text[1:-1].strip()
        return [_scalar(item) for item in inner.split(",")] if inner else []
    if text in ("true", "false"):
        return text == "true"
    if text in ("", "null", "~"):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
        # a flow list or plain scalar keeps its '#' when not preceded by a space
    return line.rstrip()


class _Reader:
    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.index = 0

    def _next_content(self):
        while self.index < len(self.lines):
            line = _strip_comment(self.lines[self.index])
            if line.strip():
                return len(line) - len(line.lstrip(" ")), line.strip()
            self.index += 1
        return None

    def _literal(self, parent_indent: int) -> str:
        out, block_indent = [], None
        while self.index < len(self.lines):
            raw = self.lines[self.index]
            if raw.strip() and len(raw) - len(raw.lstrip(" ")) <= parent_indent:
                break
            if raw.strip():
                block_indent = block_indent if block_indent is not None else len(raw) - len(raw.lstrip(" "))
                out.append(raw[block_indent:])
            else:
                out.append("")
            self.index += 1
        while out and not out[-1]:
            out.pop()
        return "\n".join(out) + "\n"

    def _value_after_key(self, rest: str, indent: int):
        if rest == "|":
            self.index += 1
            return self._literal(indent)
        if rest:
            self.index += 1
            return _scalar(rest)
        self.index += 1
        following = self._next_content()
        if following is None or following[0] < indent or (following[0] == indent and not following[1].startswith("- ")):
            return None
        return self.block(following[0])

    def block(self, indent: int):
        first = self._next_content()
        if first is None:
            return None
        if first[1].startswith("- ") or first[1] == "-":
            return self._sequence(indent)
        return self._mapping(indent)

    def _mapping(self, indent: int, first_line: str | None = None) -> dict:
        out = {}
        while True:
            if first_line is not None:
                line, first_line = first_line, None
            else:
                current = self._next_content()
                if current is None or current[0] < indent or current[1] == "---":
                    return out
                if current[0] > indent:
                    raise ValueError(f"line {self.index + 1}: unexpected indentation")
                line = current[1]
                if line.startswith("- "):
                    return out
            match = re.fullmatch(r"([^:'\"]+|'[^']*'|\"[^\"]*\"):(?:\s+(.*))?", line)
            if not match:
                raise ValueError(f"line {self.index + 1}: not a 'key: value' line: {line!r}")
            key = _scalar(match.group(1))
            out[key] = self._value_after_key((match.group(2) or "").strip(), indent)

    def _sequence(self, indent: int) -> list:
        out = []
        while True:
            current = self._next_content()
            if current is None or current[0] != indent or not current[1].startswith("-"):
                return out
            item = current[1][1:].strip()
            if not item:
                self.index += 1
                nested = self._next_content()
                out.append(self.block(nested[0]))
            elif re.fullmatch(r"([^:'\"\[]+|'[^']*'|\"[^\"]*\"):(\s+.*)?", item):
                # "- key: value" starts a mapping whose keys sit at indent + 2
                out.append(self._mapping(indent + 2, first_line=item))
            else:
                out.append(_scalar(item))
                self.index += 1


def load_all(text: str) -> list:
    """Every document in `text`, as dicts/lists/scalars."""
    documents, current = [], []
    for line in text.split("\n"):
        if line.strip() == "---":
            documents.append("\n".join(current))
            current = []
        else:
            current.append(line)
    documents.append("\n".join(current))
    parsed = []
    for document in documents:
        reader = _Reader(document)
        if reader._next_content() is None:
            continue
        value = reader.block(0)
        if reader._next_content() is not None:
            raise ValueError(f"line {reader.index + 1}: content left after the document")
        parsed.append(value)
    return parsed
