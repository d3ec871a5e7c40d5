"""Document transforms, registered by name (kind "data_transform") and applied to every document
before it is tokenised (`data.transform`, its options `data.transform_args`), or to every message
of chat data. A transform is a factory: `factory(**transform_args) -> (text -> text)`.

    counterfactual  counterfactual data augmentation (Lu et al. 2018, arXiv:1807.11714): the
                    demographic terms of a word-pair list swapped (gendered terms by default:
                    word_pairs/gender.txt), case, punctuation and possessives kept

`data.transform_mode`: "also" trains on each document and, when the transform changes it, its
transformed copy right after it; "instead" trains on the transformed documents only. The
transform is part of the token cache's key, so resuming a run reads the same tokens.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Iterator

from neojax import paths, registry

PAIRS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "word_pairs", "gender.txt")
MODES = ("also", "instead")
_WORD = re.compile(r"[A-Za-z]+")
# After these (or punctuation, or the end), "her" is an object (him); before anything else a
# determiner (his). "his" is "hers" before punctuation or the end (it is his), else "her".
_OBJECT_FOLLOWERS = frozenset(
    "a an and any as at all but by for from her his if in into is its my of on or our so some than that the their "
    "then these this those to was were when where while with your".split())


def read_pairs(path: str = PAIRS) -> dict[str, str]:
    """word -> its counterpart, both ways, from a file of "word counterpart" lines (# comments).
    A word may appear once in the whole list: a bad line names the file and line."""
    swap: dict[str, str] = {}
    text = paths.path(path).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.lower().split()
        if len(words) != 2 or not all(_WORD.fullmatch(w) for w in words) or words[0] == words[1]:
            raise ValueError(f"{path} line {n}: {line!r} is not two different words (letters only), "
                             "e.g. 'he she'")
        for word in words:
            if word in swap:
                raise ValueError(f"{path} line {n}: {word!r} is already in an earlier pair; each word may "
                                 "appear once (a swap must have one answer)")
        swap[words[0]], swap[words[1]] = words[1], words[0]
    if not swap:
        raise ValueError(f"{path} holds no word pairs; write one 'word counterpart' pair per line")
    return swap


def _cased(word: str, like: str) -> str:
    """`word` in the case of `like`: UPPER, Capitalised or lower."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[0].isupper():
        return word[0].upper() + word[1:]
    return word


def _next_word(text: str, end: int) -> str:
    """The word right after position `end` (skipping spaces), lowercased; "" at punctuation or the end."""
    rest = text[end:].lstrip(" \t")
    match = _WORD.match(rest)
    return match.group(0).lower() if match else ""


def swap_terms(text: str, swap: dict[str, str]) -> str:
    """`text` with every whole word in `swap` replaced by its counterpart (see the module doc)."""
    def replace(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if lower not in swap:
            return word
        new = swap[lower]
        if lower == "her":
            follower = _next_word(text, match.end())
            new = "him" if not follower or follower in _OBJECT_FOLLOWERS else "his"
        elif lower == "his":  # a determiner (her book), or standing alone (it is hers)
            new = "hers" if not _next_word(text, match.end()) else "her"
        return _cased(new, word)
    return _WORD.sub(replace, text)


@registry.register("data_transform", "counterfactual")
def counterfactual(pairs: str = "") -> Callable[[str], str]:
    """Swap the terms of a word-pair file (default: neojax's gendered pairs)."""
    swap = read_pairs(pairs or PAIRS)
    return lambda text: swap_terms(text, swap)


def build(name: str, args: dict) -> Callable[[str], str]:
    return registry.get("data_transform", name)(**dict(args))


def fingerprint(name: str, args: dict, mode: str) -> list:
    """What identifies a transform's output: its name, options, mode and any files it reads."""
    files = [list(paths.fingerprint(v)) for v in args.values() if isinstance(v, str) and v and paths.exists(v)]
    default = [list(paths.fingerprint(PAIRS))] if name == "counterfactual" and not args.get("pairs") else []
    return [name, dict(sorted(args.items())), mode, files + default]


def apply(docs: Iterable, transform: Callable, mode: str) -> Iterator:
    """The documents (or conversations) a run trains on: each one and, when the transform changes it,
    its copy right after it ("also"), or the copies only ("instead")."""
    for doc in docs:
        new = transform(doc)
        if mode == "instead":
            yield new
        else:
            yield doc
            if new != doc:
                yield new
