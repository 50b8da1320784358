"""PCT material and prompt variations: counts, wording, seeded option order, selections, errors."""
from __future__ import annotations

import json

import pytest
from tiny import (
    write_pct_dir,
)

from wdprobe.data.pct import (
    ANSWERS,
    build_prompts,
    load_pct,
    option_order,
    parse_personas,
    parse_selection,
)
from wdprobe.errors import PCTFormatError


def test_real_material_gives_the_studys_prompt_count(shared_data):
    m = load_pct(shared_data / "pct")
    assert len(m.propositions) == 62 and len(set(m.sections)) == 6 and all(m.sections)
    assert len(m.instructions["closed"]) == 10 and len(m.instructions["open"]) == 10
    assert len(m.personas) == 22 and m.personas[0].key == "base"
    prompts = build_prompts(m)
    persona_prompts = [p for p in prompts if p.persona != "base"]
    assert len(persona_prompts) == 62 * 420 == 26040
    assert len(prompts) - len(persona_prompts) == 62 * 20
    assert len({p.id for p in prompts}) == len(prompts)


def test_prompt_wording_and_seeded_option_order(pct_dir):
    m = load_pct(pct_dir)
    prompts = build_prompts(m, personas="base,age=18", seed=3)
    closed = [p for p in prompts if p.form == "closed"]
    for p in closed:
        listed = ", ".join(ANSWERS[c] for c in p.order)
        assert listed in p.text and sorted(p.order) == [0, 1, 2, 3]
        assert p.order == option_order(3, p.proposition, p.persona, p.instruction)
    assert len({p.order for p in closed}) > 3  # shuffled, not one fixed order
    # by item (default): every persona sees a proposition's options in the same order; by prompt: not always
    by_item = {(p.proposition, p.instruction, p.persona): p.order for p in closed}
    assert all(o == by_item[(q, i, "base")] for (q, i, _), o in by_item.items())
    per_prompt = [p for p in build_prompts(m, personas="base,age=18", seed=3, order_by="prompt") if p.form == "closed"]
    pairs = {}
    for p in per_prompt:
        pairs.setdefault((p.proposition, p.instruction), set()).add(p.order)
    assert any(len(v) == 2 for v in pairs.values())
    with pytest.raises(ValueError, match="order_by must be one of"):
        option_order(0, 0, "base", 0, by="persona")
    age = next(p for p in prompts if p.persona == "age=18")
    assert "from the perspective of a person who is 18 years old." in age.text
    base = next(p for p in prompts if p.persona == "base")
    assert base.text.startswith("Please follow all instructions. Please write all responses in English.")
    # a subset keeps each prompt's order (seeded per prompt, not per position in the list)
    sub = build_prompts(m, propositions="2", personas="age=18", closed_instructions="1", open_instructions="0", seed=3)
    full = {p.id: p for p in build_prompts(m, personas="age=18", seed=3)}
    assert all(full[p.id].order == p.order and full[p.id].text == p.text for p in sub)
    assert [p.form for p in sub] == ["closed", "open"]


def test_selection_parsing_and_errors(pct_dir):
    m = load_pct(pct_dir)
    assert parse_selection("0-2,5", 8, "proposition") == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="proposition \\[9\\] out of range"):
        parse_selection("9", 8, "proposition")
    assert [p.key for p in parse_personas("age", m)] == ["age=18", "age=81"]
    with pytest.raises(ValueError, match="unknown persona 'age=99'"):
        parse_personas("age=99", m)


def test_bad_material_names_the_file_and_entry(tmp_path):
    d = write_pct_dir(tmp_path / "pct")
    inst = json.loads((d / "instructions.json").read_text())
    inst["closed_domain"][1] = "No slots here."
    (d / "instructions.json").write_text(json.dumps(inst))
    with pytest.raises(PCTFormatError, match=r"instructions.json: closed_domain\[1\] lacks \{proposition\} and \{options\}"):
        load_pct(d)
    write_pct_dir(d)
    (d / "personas.json").unlink()
    with pytest.raises(PCTFormatError, match="personas.json: missing"):
        load_pct(d)

