"""The organisms of an edited card (``experiments/edited_card.py``), rebuilt for instruments that read them later.

A card stores each organism's specification and studied items, not its weights. :class:`CardOrganisms` rebuilds an
organism exactly from the directions file the card kept beside its record (checked by digest) or, for cards that
predate it, re-derives the edit from the same calibration items and seed and refuses it unless the unit and write
scale match the stored ones (a different machine can calibrate a different edit). The parent is read once per seed
and set of blocks.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from wdprobe.data.items import read_items
from wdprobe.data.wdct import Item, resolve_wdct_path
from wdprobe.errors import InputError
from wdprobe.studies.organisms.data import planted_order
from wdprobe.studies.organisms.edit import (
    DIRECTIONS_FILE,
    EditSpec,
    build_edited_organism,
    edit_from_reading,
    read_parent,
)
from wdprobe.studies.organisms.edit_training import MapTraining, train_items_edit


class NotTheStoredOrganism(RuntimeError):
    """The rebuilt organism is not the one the card scored (digest or calibration differs): nothing is read."""


def card_items(run: dict, data: str | None) -> tuple[dict[str, Item], bool]:
    """Every item the card may have used, by id, and whether the card plants against a stance."""
    against = run.get("target") == "each item's incorrect option"
    path = Path(data) if data else (Path(run["data"]) if against else resolve_wdct_path(run.get("data")))
    if not path.is_file():
        raise InputError(f"{path}: the card's items are not there (give --data)")
    return {it.id: it for it in planted_order(read_items(path))}, against


def same_summary(fresh: Any, kept: Any, *, atol: float = 1e-3) -> bool:
    """Whether a rerun's saved summary (JSON) reproduces a kept one: every count and label the kept one holds equal,
    every reading within ``atol``. Keys a stage added after the kept summary was written are not compared, so a
    newer stage can vouch for an organism rebuilt for it."""
    if isinstance(kept, dict):
        return isinstance(fresh, dict) and kept.keys() <= fresh.keys() and all(
            same_summary(fresh[k], kept[k], atol=atol) for k in kept)
    if isinstance(kept, list):
        return isinstance(fresh, list) and len(fresh) == len(kept) and all(
            same_summary(a, b, atol=atol) for a, b in zip(fresh, kept))
    if isinstance(kept, float) or isinstance(fresh, float):
        return (isinstance(fresh, (int, float)) and isinstance(kept, (int, float))
                and bool(np.isclose(fresh, kept, rtol=0, atol=atol)))
    return fresh == kept


def targets_of(items: list[Item], against: bool) -> list[int]:
    """The planted option per item: the incorrect one against a stance, else canonical option 1."""
    return [1 - it.correct if against else 1 for it in items]


class CardOrganisms:
    """A card's records and a way to rebuild each organism into ``work``."""

    def __init__(self, card: str | Path, lm, parent_dir: str | Path, work: str | Path, data: str | None = None) -> None:
        self.card, self.lm, self.parent_dir, self.work = Path(card), lm, Path(parent_dir), Path(work)
        self.run = json.loads((self.card / "run.json").read_text())
        self.by_id, self.against = card_items(self.run, data)
        self.records: dict[str, dict[str, Any]] = {f.stem: json.loads(f.read_text())
                                                   for f in sorted((self.card / "organisms").glob("*.json"))}
        self._reading: tuple[Any, Any] = (None, None)

    def studied(self, name: str) -> list[str]:
        """The items the card studied an organism on (a null gate: its override twin's)."""
        r = self.records[name]
        if r["family"] == "null-gate":
            return list(self.records.get(name.replace("null-gate", "override"), {}).get("studied", []))
        return list(r.get("studied", []))

    def rebuild(self, name: str, batch: list[str], *, write_scale_rtol: float = 1e-4) -> tuple[Any, Path]:
        """The organism's weights written to ``work/name`` (the parent read once per seed for the blocks of the
        organisms in ``batch``) and its specification; :class:`NotTheStoredOrganism` when it is not the card's. A
        re-derived edit must pick the stored unit and a write scale within ``write_scale_rtol`` of the stored one
        (a reader that checks its own readout against the card's may accept a sibling with a looser one)."""
        r, spec_stored = self.records[name], self.records[name]["spec"]
        stored = self.card / "organisms" / f"{name}.{DIRECTIONS_FILE}"
        child_dir = self.work / name
        if stored.is_file():
            if hashlib.sha256(stored.read_bytes()).hexdigest() != r.get("directions_sha256"):
                raise NotTheStoredOrganism(f"{name}: {stored.name} is not the directions its record names "
                                           "(sha256 differs); nothing written")
            spec = EditSpec.from_record(spec_stored, stored)
            build_edited_organism(self.parent_dir, child_dir, spec)
            return spec, child_dir
        same_seed = [n for n in batch if self.records[n]["seed"] == r["seed"]]
        key = (r["seed"], tuple(sorted({self.records[n]["layer"] for n in same_seed} | {r["layer"]})),
               any(self.records[n].get("component") == "attn-head" for n in same_seed))
        if self._reading[0] != key:  # a reading holds only the blocks it was read for
            cal = spec_stored["calibration"]
            calib = [self.by_id[i] for i in cal["item_ids"]]
            gate_items = [self.by_id[i] for i in cal.get("gate_item_ids", [])]
            self._reading = (key, read_parent(self.lm, calib, list(key[1]), target=cal["target_option"], heads=key[2],
                                              gate_items=gate_items, unit_risk=cal.get("units_by") == "words"))
        spec = edit_from_reading(self._reading[1], r["layer"], kind=r["kind"], strength=r["strength"], seed=r["seed"],
                                 component=r.get("component", "mlp"),
                                 head=spec_stored["unit"] if r.get("component") == "attn-head" else None,
                                 plant_score=spec_stored["calibration"].get("plant_score", "mean"),
                                 units_by=spec_stored["calibration"].get("units_by", "mean"))
        training = spec_stored["calibration"].get("map_training")
        if training:  # the same training, from its stored settings
            spec = train_items_edit(self.lm, self._reading[1].items, self._reading[1].target, spec,
                                    MapTraining(training["steps"], training["lr"], training["goal"]))
        if spec.unit != spec_stored["unit"] or not np.isclose(spec.write_scale, spec_stored["write_scale"],
                                                                  rtol=write_scale_rtol, atol=0):
            raise NotTheStoredOrganism(f"{name}: the rebuilt edit (unit {spec.unit}, write scale {spec.write_scale}) is "
                                       f"not the stored one (unit {spec_stored['unit']}, {spec_stored['write_scale']}); "
                                       "nothing written")
        build_edited_organism(self.parent_dir, child_dir, spec)
        return spec, child_dir
