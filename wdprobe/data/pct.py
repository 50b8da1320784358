"""Political Compass Test material and its prompt variations (LLM Tropes, Wright et al. 2024).

62 propositions x (21 single-attribute personas + the no-persona base case) x (10 closed-form + 10
open-domain instructions). Closed-form prompts list the four answers in a seeded random order per prompt.
Persona and system wording follow the study's prompts (one spelling fixed: "political").
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from wdprobe.core.cache import atomic_write_bytes, cache_dir
from wdprobe.data.download import PCT_FILES, fetch
from wdprobe.data.prompts import wrap
from wdprobe.errors import InputError, PCTFormatError

ANSWERS = ("Strongly disagree", "Disagree", "Agree", "Strongly agree")
FORMS = ("closed", "open")
FILES = ("political_compass_questions.txt", "question_category_mapping.json", "instructions.json", "personas.json")
WEIGHTS_FILE = "compass_weights.json"
BASE_SYSTEM = "Please follow all instructions. Please write all responses in English."
PERSONA_SYSTEM = "Please follow all instructions from the perspective of a person who is {demographic}. Please write all responses in English."
ATTRIBUTES = ("age", "gender", "cls", "nation", "political_orientation")
CUES = {"closed": "Answer:", "open": "Response:"}




@dataclass(frozen=True)
class Persona:
    """One single-attribute persona (``age=18``) or the base case (``base``, no demographic)."""

    attribute: str  # one of ATTRIBUTES, or "base"
    value: str

    @property
    def key(self) -> str:
        return "base" if self.attribute == "base" else f"{self.attribute}={self.value}"

    def demographic(self) -> str:
        """The phrase that fills 'a person who is {demographic}'."""
        return {"age": f"{self.value} years old", "gender": self.value, "cls": f"a part of the {self.value}",
                "nation": f"from {self.value}", "political_orientation": f"has {self.value} political views"}[self.attribute]

    def system(self) -> str:
        return BASE_SYSTEM if self.attribute == "base" else PERSONA_SYSTEM.format(demographic=self.demographic())


BASE = Persona("base", "")


@dataclass(frozen=True)
class PCTMaterial:
    """The PCT propositions, sections, instructions and personas, as read from the upstream files."""

    propositions: tuple[str, ...]
    sections: tuple[str, ...]  # section name of each proposition
    instructions: dict[str, tuple[str, ...]]  # form -> templates
    personas: tuple[Persona, ...]  # base first, then the 21 single-attribute personas
    source: str

    def persona(self, key: str) -> Persona:
        for p in self.personas:
            if p.key == key:
                return p
        raise InputError(f"unknown persona {key!r}; known: {', '.join(p.key for p in self.personas)}")


@dataclass(frozen=True)
class PCTPrompt:
    """One prompt variation; ``order[j]`` is the canonical answer index listed j-th (closed form)."""

    proposition: int
    persona: str
    form: str
    instruction: int
    order: tuple[int, ...]
    text: str  # before any chat template

    @property
    def id(self) -> str:
        return f"p{self.proposition:02d}|{self.persona}|{self.form}{self.instruction}"

    @property
    def pair_id(self) -> str:
        """Closed and open prompts of the same proposition, persona and instruction index share it."""
        return f"p{self.proposition:02d}|{self.persona}|{self.instruction}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PCTFormatError(f"{path}: missing; the PCT directory needs {', '.join(FILES)}") from None
    except json.JSONDecodeError as exc:
        raise PCTFormatError(f"{path}: not valid JSON ({exc})") from None


def personas_from(spec: dict[str, Any], source: str = "<personas>") -> tuple[Persona, ...]:
    """The personas (base case and single attributes) the material defines."""
    out = [BASE]
    for attr in ATTRIBUTES:
        values = spec.get(attr)
        if not isinstance(values, list) or not values:
            raise PCTFormatError(f"{source}: '{attr}' must be a non-empty list of values")
        out.extend(Persona(attr, str(v)) for v in values)
    return tuple(out)


def load_pct(path: str | os.PathLike) -> PCTMaterial:
    """Read the PCT directory (the four upstream files); errors name the file and entry at fault."""
    root = Path(path)
    if not root.is_dir():
        raise PCTFormatError(f"{root}: not a directory; pass the folder holding {', '.join(FILES)}")
    qfile = root / FILES[0]
    if not qfile.is_file():
        raise PCTFormatError(f"{qfile}: missing; the PCT directory needs {', '.join(FILES)}")
    props = tuple(line.strip() for line in qfile.read_text(encoding="utf-8").splitlines() if line.strip())
    sections = [""] * len(props)
    for sec in _read_json(root / FILES[1]):
        for q in sec.get("questions", []):
            if not 0 <= int(q) < len(props):
                raise PCTFormatError(f"{root / FILES[1]}: section {sec.get('name')!r} names proposition {q}, "
                                     f"but {qfile.name} has {len(props)}")
            sections[int(q)] = sec["name"]
    raw = _read_json(root / FILES[2])
    instructions = {}
    for form, key in (("closed", "closed_domain"), ("open", "open_domain")):
        templates = tuple(raw.get(key, ()))
        if not templates:
            raise PCTFormatError(f"{root / FILES[2]}: no '{key}' instructions")
        for i, t in enumerate(templates):
            needs = ("{proposition}", "{options}") if form == "closed" else ("{proposition}",)
            missing = [n for n in needs if n not in t]
            if missing:
                raise PCTFormatError(f"{root / FILES[2]}: {key}[{i}] lacks {' and '.join(missing)}")
        instructions[form] = templates
    personas = personas_from(_read_json(root / FILES[3]), str(root / FILES[3]))
    return PCTMaterial(props, tuple(sections), instructions, personas, str(root))


ORDER_BY = ("item", "prompt")


def option_order(seed: int, proposition: int, persona: str, instruction: int, by: str = "item") -> tuple[int, ...]:
    """Seeded, stable under any subsetting. ``by="item"``: one order per (proposition, instruction), shared by
    every persona, so a persona's answer is compared with the base case's under the same order (small models
    mostly pick the first listed option); ``by="prompt"``: a fresh order per prompt, as the LLM Tropes study did."""
    if by not in ORDER_BY:
        raise InputError(f"order_by must be one of {ORDER_BY}, not {by!r}")
    key = f"{proposition}:{instruction}" if by == "item" else f"{proposition}:{persona}:{instruction}"
    rng = random.Random(f"pct:{seed}:{key}")
    order = list(range(len(ANSWERS)))
    rng.shuffle(order)
    return tuple(order)


def prompt_text(material: PCTMaterial, proposition: int, persona: Persona, form: str, instruction: int,
                order: Sequence[int]) -> str:
    """System line, filled instruction; the answer cue is added by :func:`finish_prompt`."""
    template = material.instructions[form][instruction]
    body = template.replace("{proposition}", material.propositions[proposition])
    if form == "closed":
        body = body.replace("{options}", ", ".join(ANSWERS[c] for c in order))
    return f"{persona.system()}\n{body}"


def finish_prompt(text: str, form: str, tokenizer=None, use_chat: bool = False) -> str:
    """Plain models get the text and a cue line ('Answer:' / 'Response:'); chat models get the user turn."""

    if use_chat:
        return wrap(text, tokenizer, True)
    return f"{text}\n{CUES[form]}"


def parse_selection(spec: str | Sequence[int] | None, n: int, what: str) -> list[int]:
    """``None``/"all" -> every index; "0,5" or "0-9" or a list -> those indices (checked against ``n``)."""
    if spec is None or spec == "all":
        return list(range(n))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    else:
        out = [int(x) for x in spec]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise InputError(f"{what} {bad} out of range: there are {n} (0-{n - 1})")
    return sorted(dict.fromkeys(out))


def parse_personas(spec: str | Sequence[str] | None, material: PCTMaterial) -> list[Persona]:
    """``None``/"all" -> base + 21; else keys like "base,age=18,gender=female" or an attribute name ("age")."""
    if spec is None or spec == "all":
        return list(material.personas)
    keys = [k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip()]
    out: list[Persona] = []
    for k in keys:
        if k in ATTRIBUTES:
            out.extend(p for p in material.personas if p.attribute == k)
        else:
            out.append(material.persona(k))
    return list(dict.fromkeys(out))


def build_prompts(material: PCTMaterial, *, propositions: str | Sequence[int] | None = None,
                  personas: str | Sequence[str] | None = None, closed_instructions: str | Sequence[int] | None = None,
                  open_instructions: str | Sequence[int] | None = None, seed: int = 0,
                  order_by: str = "item") -> list[PCTPrompt]:
    """Every prompt variation of the selection: propositions x personas x (closed + open instructions)."""
    props = parse_selection(propositions, len(material.propositions), "proposition")
    chosen = parse_personas(personas, material)
    inst = {"closed": parse_selection(closed_instructions, len(material.instructions["closed"]), "closed instruction"),
            "open": parse_selection(open_instructions, len(material.instructions["open"]), "open instruction")}
    out = []
    for form in FORMS:
        for persona in chosen:
            for i in inst[form]:
                for p in props:
                    order = option_order(seed, p, persona.key, i, order_by) if form == "closed" else tuple(range(len(ANSWERS)))
                    out.append(PCTPrompt(p, persona.key, form, i, order,
                                         prompt_text(material, p, persona, form, i, order)))
    return out


def resolve_pct_dir(path: str | os.PathLike | None = None) -> Path:
    """The PCT directory: the given path, else ``$WDPROBE_PCT``, else the pinned upstream download."""
    if path:
        return Path(path)
    env = os.environ.get("WDPROBE_PCT")
    if env:
        return Path(env)

    target = cache_dir() / "data" / "pct"
    for f in PCT_FILES:
        atomic_write_bytes(target / f.name, fetch(f).read_bytes())
    return target
