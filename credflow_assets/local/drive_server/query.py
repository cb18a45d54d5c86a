"""The small languages of a files.list request: `q`, `orderBy` and `fields`.

`q` is parsed into a tree and compiled to a SQL condition over the store's tables (`files f`,
`parents`, `props`), so `'<id>' in parents` and `appProperties has {…}` are index lookups, not
scans. Anything not understood raises `QueryError`; nothing is ever silently true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

FOLDER_MIME = "application/vnd.google-apps.folder"


class QueryError(ValueError):
    """A request parameter the server cannot understand; `location` names the parameter."""

    def __init__(self, message: str, location: str = "q") -> None:
        super().__init__(message)
        self.location = location


# ---------------------------------------------------------------------------------------------
# `name contains`: Drive's token-prefix match

def name_tokens(text: str) -> list[str]:
    """Case-folded tokens of `text`: every non-alphanumeric character separates tokens."""
    return "".join(ch if ch.isalnum() else " " for ch in text.casefold()).split()


def name_contains(name: str | None, query: str) -> bool:
    """Drive's `name contains`: every word of the query is a prefix of some token of the name.

    `'Lamb'` finds `Lambert, Nicholas`; `'World'` does not find `HelloWorld`.
    """
    tokens = name_tokens(name or "")
    return all(any(token.startswith(word) for token in tokens) for word in name_tokens(query))


# ---------------------------------------------------------------------------------------------
# `q`: tokenizer

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>'(?:[^'\\]|\\.)*')
      | (?P<op>!=|<=|>=|=|<|>)
      | (?P<punct>[(){}])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # string | op | punct | word | end
    text: str
    pos: int
    value: Any = None


def _unescape(literal: str, pos: int) -> str:
    out, i, body = [], 0, literal[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in "\\'":
                raise QueryError(
                    f"unsupported escape sequence '\\{nxt}' in the string literal at position "
                    f"{pos} (only \\' and \\\\ are allowed)"
                )
            out.append(nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _tokenize(q: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(q):
        match = _TOKEN.match(q, pos)
        if match is None:
            if q[pos] == "'":
                raise QueryError(f"unterminated string literal at position {pos}")
            raise QueryError(f"unexpected character {q[pos]!r} at position {pos}")
        kind = match.lastgroup
        text = match.group()
        if kind == "string":
            tokens.append(_Token("string", text, pos, _unescape(text, pos)))
        elif kind != "space":
            tokens.append(_Token(kind, text, pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(q)))
    return tokens


# ---------------------------------------------------------------------------------------------
# `q`: parser (tree nodes are tuples) and compiler

_STRING_OPS = {"=", "!=", "contains"}
_TIME_OPS = {"=", "!=", "<", "<=", ">", ">="}
_TERMS = {
    "name": ("string", _STRING_OPS, "f.name"),
    "mimeType": ("string", _STRING_OPS, "f.mime_type"),
    "modifiedTime": ("time", _TIME_OPS, "f.modified_ms"),
    "createdTime": ("time", _TIME_OPS, "f.created_ms"),
    "trashed": ("bool", {"=", "!="}, "f.trashed"),
}
_HAS_TERMS = {"appProperties": "app", "properties": "public"}
# Real Drive terms this server does not implement: named as such rather than "unknown".
_UNSUPPORTED_TERMS = {
    "fullText", "starred", "sharedWithMe", "viewedByMeTime", "visibility", "memberCount",
    "organizerCount", "hidden", "shortcutDetails.targetId", "labels", "owners", "writers",
    "readers", "driveId", "modifiedByMeTime", "sharedWithMeTime",
}


class _Parser:
    def __init__(self, q: str) -> None:
        self.tokens = _tokenize(q)
        self.i = 0

    # -- token helpers
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def is_keyword(self, token: _Token, word: str) -> bool:
        return token.kind == "word" and token.text.lower() == word

    def expect(self, kind: str, text: str | None = None, what: str = "") -> _Token:
        token = self.take()
        if token.kind != kind or (text is not None and token.text.lower() != text):
            wanted = what or repr(text or kind)
            raise QueryError(f"expected {wanted} at position {token.pos}, found {_show(token)}")
        return token

    # -- grammar
    def parse(self) -> tuple:
        node = self.or_expr()
        token = self.peek()
        if token.kind != "end":
            raise QueryError(f"unexpected {_show(token)} at position {token.pos}")
        return node

    def or_expr(self) -> tuple:
        items = [self.and_expr()]
        while self.is_keyword(self.peek(), "or"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else ("or", items)

    def and_expr(self) -> tuple:
        items = [self.not_expr()]
        while self.is_keyword(self.peek(), "and"):
            self.take()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else ("and", items)

    def not_expr(self) -> tuple:
        if self.is_keyword(self.peek(), "not"):
            self.take()
            return ("not", self.not_expr())
        return self.primary()

    def primary(self) -> tuple:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.take()
            node = self.or_expr()
            self.expect("punct", ")", "')'")
            return node
        if token.kind == "string":
            return self.in_term()
        if token.kind == "word":
            return self.field_term()
        raise QueryError(f"expected a query term at position {token.pos}, found {_show(token)}")

    def in_term(self) -> tuple:
        value = self.take()
        self.expect("word", "in", "'in' after a quoted value")
        field = self.expect("word", what="'parents' after 'in'")
        if field.text == "parents":
            return ("in_parents", value.value)
        if field.text in _UNSUPPORTED_TERMS:
            raise QueryError(f"query term '{field.text}' is not supported by the local Drive server")
        raise QueryError(f"unknown collection '{field.text}' after 'in' at position {field.pos}")

    def field_term(self) -> tuple:
        field = self.take()
        name = field.text
        if name in _HAS_TERMS:
            return self.has_term(field)
        if name not in _TERMS:
            if name in _UNSUPPORTED_TERMS:
                raise QueryError(f"query term '{name}' is not supported by the local Drive server")
            raise QueryError(f"unknown query term '{name}' at position {field.pos}")
        kind, ops, _column = _TERMS[name]
        op_token = self.take()
        op = op_token.text if op_token.kind == "op" else op_token.text.lower()
        if op_token.kind not in ("op", "word") or op not in ops:
            allowed = ", ".join(sorted(ops))
            raise QueryError(
                f"operator {_show(op_token)} is not valid for '{name}' (valid: {allowed})"
            )
        value = self.take()
        return ("cmp", name, op, _typed_value(name, kind, value))

    def has_term(self, field: _Token) -> tuple:
        self.expect("word", "has", f"'has' after '{field.text}'")
        self.expect("punct", "{", "'{'")
        found: dict[str, str] = {}
        while True:
            part = self.expect("word", what="'key' or 'value'")
            if part.text not in ("key", "value") or part.text in found:
                raise QueryError(
                    f"expected 'key' or 'value' inside {field.text} has {{…}} at position "
                    f"{part.pos}, found {_show(part)}"
                )
            self.expect("op", "=", "'='")
            literal = self.expect("string", what="a quoted string")
            found[part.text] = literal.value
            if len(found) == 2:
                break
            self.expect("word", "and", "'and'")
        self.expect("punct", "}", "'}'")
        return ("has", _HAS_TERMS[field.text], found["key"], found["value"])


def _show(token: _Token) -> str:
    return "end of query" if token.kind == "end" else repr(token.text)


def _typed_value(name: str, kind: str, token: _Token) -> Any:
    if kind == "bool":
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            return token.text.lower() == "true"
        raise QueryError(f"'{name}' needs true or false, found {_show(token)}")
    if token.kind != "string":
        raise QueryError(f"'{name}' needs a quoted string, found {_show(token)}")
    if kind == "time":
        return parse_time_ms(token.value, f"'{name}' value")
    return token.value


def parse_time_ms(text: str, what: str = "time", location: str = "q") -> int:
    """An RFC 3339 timestamp as integer milliseconds since the epoch (UTC if no offset)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(f"{what} {text!r} is not an RFC 3339 timestamp", location) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_q(q: str | None) -> tuple | None:
    """Parse a `q` string into a tree (None for an empty query)."""
    if q is None or not q.strip():
        return None
    return _Parser(q).parse()


def compile_q(tree: tuple | None, *, root_id: str) -> tuple[str, list]:
    """SQL condition and parameters for a parsed `q` ('root' stands for the My Drive root)."""
    if tree is None:
        return "1", []
    params: list = []
    sql = _compile(tree, params, root_id)
    return sql, params


def _compile(node: tuple, params: list, root_id: str) -> str:
    kind = node[0]
    if kind in ("and", "or"):
        return "(" + f" {kind.upper()} ".join(_compile(n, params, root_id) for n in node[1]) + ")"
    if kind == "not":
        return f"(NOT {_compile(node[1], params, root_id)})"
    if kind == "in_parents":
        params.append(root_id if node[1] == "root" else node[1])
        return "f.id IN (SELECT file_id FROM parents WHERE parent_id = ?)"
    if kind == "has":
        params.extend(node[1:])
        return "f.id IN (SELECT file_id FROM props WHERE kind = ? AND key = ? AND value = ?)"
    _, name, op, value = node
    column = _TERMS[name][2]
    if op == "contains":
        params.append(value)
        return f"drive_name_contains({column}, ?)"
    params.append(int(value) if isinstance(value, bool) else value)
    return f"{column} {op} ?"


# ---------------------------------------------------------------------------------------------
# orderBy

_ORDER_KEYS = {
    "createdTime": "f.created_ms",
    "modifiedTime": "f.modified_ms",
    "name": "f.name COLLATE NOCASE",
    # Folders first when ascending, like Drive's own listings.
    "folder": f"(f.mime_type != '{FOLDER_MIME}')",
}
_UNSUPPORTED_ORDER_KEYS = {
    "name_natural", "quotaBytesUsed", "recency", "sharedWithMeTime", "starred",
    "viewedByMeTime", "modifiedByMeTime",
}


def compile_order_by(order_by: str | None) -> str:
    """SQL ORDER BY list for a Drive `orderBy` (always ending in a stable tie-breaker)."""
    terms = []
    for item in (order_by or "").split(","):
        words = item.split()
        if not words:
            continue
        key, direction = words[0], (words[1].lower() if len(words) > 1 else "asc")
        if len(words) > 2 or direction not in ("asc", "desc"):
            raise QueryError(f"Invalid orderBy item {item.strip()!r}", "orderBy")
        if key not in _ORDER_KEYS:
            if key in _UNSUPPORTED_ORDER_KEYS:
                raise QueryError(
                    f"orderBy key '{key}' is not supported by the local Drive server", "orderBy"
                )
            raise QueryError(f"Invalid orderBy key '{key}'", "orderBy")
        terms.append(f"{_ORDER_KEYS[key]} {direction.upper()}")
    terms += ["f.created_ms ASC", "f.id ASC"]
    return ", ".join(terms)


# ---------------------------------------------------------------------------------------------
# fields (partial responses): "files(id,name),nextPageToken", "appProperties/key", "*"

FieldTree = dict  # name -> FieldTree | None (None: the whole value)

FILE_FIELDS = frozenset(
    """appProperties capabilities clientEncryptionDetails contentHints contentRestrictions
    copyRequiresWriterPermission createdTime description downloadRestrictions driveId
    explicitlyTrashed exportLinks fileExtension folderColorRgb fullFileExtension
    hasAugmentedPermissions hasThumbnail headRevisionId iconLink id imageMediaMetadata
    inheritedPermissionsDisabled isAppAuthorized kind labelInfo lastModifyingUser
    linkShareMetadata md5Checksum mimeType modifiedByMe modifiedByMeTime modifiedTime name
    originalFilename ownedByMe owners parents permissionIds permissions properties
    quotaBytesUsed resourceKey sha1Checksum sha256Checksum shared sharedWithMeTime sharingUser
    shortcutDetails size spaces starred teamDriveId thumbnailLink thumbnailVersion trashed
    trashedTime trashingUser version videoMediaMetadata viewedByMe viewedByMeTime
    viewersCanCopyContent webContentLink webViewLink writersCanShare""".split()
)
FILE_LIST_FIELDS = frozenset({"kind", "nextPageToken", "incompleteSearch", "files"})
_FIELD_NAME = re.compile(r"[^,()/\s]+")


def parse_fields(text: str) -> FieldTree:
    """Parse a `fields` selector into a tree."""
    tree, pos = _parse_field_list(text, 0)
    if pos != len(text):
        raise QueryError(f"Invalid field selection {text!r}: unexpected {text[pos]!r}", "fields")
    return tree


def _parse_field_list(text: str, pos: int) -> tuple[FieldTree, int]:
    tree: FieldTree = {}
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        path = []
        while True:
            match = _FIELD_NAME.match(text, pos)
            if match is None:
                raise QueryError(f"Invalid field selection {text!r} at position {pos}", "fields")
            path.append(match.group())
            pos = match.end()
            if pos < len(text) and text[pos] == "/":
                pos += 1
                continue
            break
        sub: FieldTree | None = None
        if pos < len(text) and text[pos] == "(":
            sub, pos = _parse_field_list(text, pos + 1)
            if pos >= len(text) or text[pos] != ")":
                raise QueryError(f"Invalid field selection {text!r}: missing ')'", "fields")
            pos += 1
        for name in reversed(path[1:]):
            sub = {name: sub}
        _merge(tree, path[0], sub)
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        return tree, pos


def _merge(tree: FieldTree, name: str, sub: FieldTree | None) -> None:
    if name in tree and tree[name] is not None and sub is not None:
        for key, value in sub.items():
            _merge(tree[name], key, value)
    else:
        tree[name] = None if (name in tree and tree[name] is None) or sub is None else sub


def validate_fields(tree: FieldTree, allowed: frozenset, nested: dict | None = None) -> None:
    """Refuse names the resource does not have, like Drive's "Invalid field selection"."""
    for name, sub in tree.items():
        if name != "*" and name not in allowed:
            raise QueryError(f"Invalid field selection {name}", "fields")
        if sub is not None and nested and name in nested:
            validate_fields(sub, nested[name])


def apply_fields(value: Any, tree: FieldTree | None) -> Any:
    """Keep only the selected parts of a response value."""
    if tree is None:
        return value
    if isinstance(value, list):
        return [apply_fields(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree and tree["*"] is None:
        selected = dict(value)
    else:
        selected = {}
    for name, sub in tree.items():
        if name == "*":
            if sub is not None:
                selected.update({k: apply_fields(v, sub) for k, v in value.items()})
        elif name in value:
            selected[name] = apply_fields(value[name], sub)
    return selected
