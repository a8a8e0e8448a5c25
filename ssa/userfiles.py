"""Files a user writes by hand (a `--config`, `--prompts` or `--label-map` YAML/JSON), read with
limits: a size cap, YAML aliases refused (an alias bomb grows exponentially once the values are
copied or printed), a key given twice refused (plain YAML keeps the last silently). Every
refusal is one SSAError line naming the flag, the file and, for a key, the key and its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssa.errors import SSAError

MAX_USER_FILE_BYTES = 4 << 20  # a config, prompts or label-map file is text, never this large


def read_user_yaml(path: str | Path, flag: str, max_bytes: int = MAX_USER_FILE_BYTES) -> Any:
    """A user's YAML (or JSON, which YAML reads) file as Python values, with limits.

    Refused, each with one SSAError line naming `flag` and the file: a missing or unreadable
    file, one larger than `max_bytes`, text that is not UTF-8, invalid YAML, an alias (`*name`;
    an alias bomb grows exponentially once the values are copied or printed) and a key given
    twice in one mapping (plain YAML keeps the last silently); the message names the key and
    its line.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SSAError(
                f"{flag} {path} is {size / (1 << 20):.1f} MiB, over the {max_bytes >> 20} MiB "
                f"limit for such files; pass a smaller file"
            )
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)  # the file may grow between stat and read
    except OSError as exc:
        raise SSAError(f"{flag} {path}: cannot read it ({exc.strerror or exc}); check the path") from None
    if len(raw) > max_bytes:
        raise SSAError(f"{flag} {path} is over the {max_bytes >> 20} MiB limit; pass a smaller file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SSAError(f"{flag} {path} is not UTF-8 text; pass a YAML or JSON file") from None
    return parse_user_yaml(text, f"{flag} {path}")


def parse_user_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)` with aliases and duplicate keys refused (see `read_user_yaml`);
    `where` names the source in the message."""
    import yaml

    from ssa.errors import first_line

    class Refused(Exception):
        pass

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise Refused(
                    f"uses the YAML alias *{event.anchor} (line {event.start_mark.line + 1}); "
                    f"aliases are refused: write the values out"
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: construct_mapping refuses it below
                    continue
                if duplicate:
                    raise Refused(
                        f"gives key {key!r} twice (line {key_node.start_mark.line + 1}); "
                        f"keep one"
                    )
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass
    except Refused as exc:
        raise SSAError(f"{where} {exc}") from None
    except yaml.YAMLError as exc:
        raise SSAError(f"{where} is not valid YAML ({first_line(exc)}); fix the file") from None
