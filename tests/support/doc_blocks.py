"""The code blocks of README.md and docs/*.md, as a reader sees them: language, code, and what the
HTML comment right above says about them.

Conventions (the docs follow them; `tests/unit/test_doc_blocks.py` holds them):
- every fenced block names its language; `bash` and `python` blocks are run as written
  (`tests/e2e/test_doc_code_blocks.py`), every other language is not code to run (`text` for
  diagrams and printed output, `json`, `yaml`, `promql`);
- `<!-- not-run: why -->` right above a bash/python block: it is not run, and the reason says why
  (a cluster, a placeholder path, a foreground server) and what test covers it instead;
- `<!-- output -->` right above a block: what the runnable block before it prints, exactly;
  `<!-- output: rounded to N decimals -->`: JSON documents whose numbers the server sends in full.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sentiment.paths import REPO_ROOT

RUNNABLE = {"bash", "python"}
NOT_RUN_LANGUAGES = {"text", "json", "yaml", "promql"}
_COMMENT = re.compile(r"^<!--\s*(.*?)\s*-->$")
_ROUNDED = re.compile(r"^output: rounded to (\d+) decimals$")


def documents() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int            # of the opening fence, 1-based
    language: str
    code: str
    marker: str | None   # the HTML comment right above, without <!-- -->

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        if self.marker and self.marker.startswith("not-run:"):
            return self.marker[len("not-run:"):].strip()
        return None

    @property
    def is_output(self) -> bool:
        return bool(self.marker) and (self.marker == "output" or self.marker.startswith("output:"))

    @property
    def rounding(self) -> int | None:
        """Decimals the shown numbers are rounded to; None: the output is shown exactly."""
        match = _ROUNDED.match(self.marker or "")
        return int(match.group(1)) if match else None

    @property
    def runs(self) -> bool:
        return self.language in RUNNABLE and self.not_run_reason is None and not self.is_output


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file, in order."""
    lines = path.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        fence = lines[index]
        if not fence.startswith("```"):
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        assert end is not None, f"{path}:{index + 1}: a code block that is never closed"
        above = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        comment = _COMMENT.match(above)
        found.append(Block(path, index + 1, fence[3:].strip().split(" ")[0], "\n".join(lines[index + 1:end]) + "\n",
                           comment.group(1) if comment else None))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks(path)]


def with_outputs() -> list[tuple[Block, Block | None]]:
    """Each runnable block with the output block that follows it (None when none is shown)."""
    pairs = []
    for path in documents():
        found = blocks(path)
        for index, block in enumerate(found):
            if block.runs:
                following = found[index + 1] if index + 1 < len(found) else None
                pairs.append((block, following if following is not None and following.is_output else None))
    return pairs


def json_documents(text: str) -> list:
    """JSON documents one after another (curl prints them without separators; docs one per line)."""
    decoder, documents_found, position = json.JSONDecoder(), [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return documents_found
        document, position = decoder.raw_decode(text, position)
        documents_found.append(document)


def rounded(value, decimals: int):
    """Every float in a JSON value rounded (what the docs show of the server's full floats)."""
    if isinstance(value, float):
        return round(value, decimals)
    if isinstance(value, list):
        return [rounded(item, decimals) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item, decimals) for key, item in value.items()}
    return value


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {slug(match.group(1)) for match in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor or '') of every relative markdown link in `path`."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        found.append((target, (path.parent / file_part).resolve() if file_part else path, anchor))
    return found
