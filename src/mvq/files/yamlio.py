"""YAML as mvq reads it (config files and ``section.key=value`` overrides): UTF-8 text, no
aliases (an alias bomb expands to gigabytes when the config is copied), no duplicate keys (YAML
keeps the last one silently), control characters and deep nesting refused in one line."""

from __future__ import annotations

from pathlib import Path

import yaml

from mvq.errors import MvqError


class _StrictLoader(yaml.SafeLoader):
    """YAML without aliases (an alias bomb expands to gigabytes when the config is copied) and
    without duplicate keys (YAML keeps the last one: a section written twice loses the first)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise MvqError(f"{mark.name}, line {mark.line + 1}: YAML aliases (*name) are not "
                           "accepted in mvq configs; write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise MvqError(f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: "
                               f"a config key must be a name, found {key!r}")
            if key in seen:
                raise MvqError(f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: "
                               f"key {key!r} appears twice in one mapping; keep one (YAML would "
                               "silently drop the first)")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str):
    """The value of YAML ``text`` (aliases and duplicate keys refused); MvqError naming
    ``where`` when it is not valid YAML."""
    loader = None
    try:
        loader = _StrictLoader(text)  # reads (and refuses) control characters at once
        loader.name = where
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise MvqError(f"{where} is not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise MvqError(f"{where} nests too deeply to be a config; write it flat") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_mapping(path: Path, sections: str) -> dict:
    """The mapping in the YAML file ``path`` (empty file: {}; ``sections``: the keys it may hold,
    for the message); MvqError when it is not UTF-8 text, not valid YAML, or not a mapping."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise MvqError(f"{path} is not UTF-8 text (byte {err.start}); save the config as "
                       "UTF-8") from None
    except OSError as err:
        raise MvqError(f"cannot read config {path}: {err.strerror}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MvqError(f"{path} must hold a mapping of sections ({sections}), "
                       f"found a YAML {type(data).__name__}; write e.g. 'train: {{steps: 100}}'")
    return data
