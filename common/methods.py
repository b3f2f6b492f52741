"""The registry of steering methods: what each reads, what it proposes per class, how tables name and colour it.

A method turns upstream outputs into one unit intervention per class it steers ("correct": meant to
make code pass; "incorrect": meant to make it fail), at the steering layer and position. Phases 4.5
and 4.8 iterate the registry; they never name a method. Adding one is a registry entry here (or in
its own module imported below) plus the phase that makes its upstream output, listed among phase
4.5's upstream phases in common/phases.py. A direction saved in a phase's `directions.safetensors`
takes one line, as the contrastive ones below do:

    method("paired_pca", "paired PCA", "#264653", upstream=("2.6",))(
        from_directions("2.6", "paired_pca", "first component of per-task paired differences"))

anything else a `@method` function from the SteeringSite to a Proposal (`sae_latent` below). Phase 4.5
then calibrates it at every disruption level against the controls, chooses its level by the rule, and
phase 4.8 measures it: nothing else changes. A method whose interventions are not residual additions at the
steering site passes `controls=`, a function making its own controls of the same kind (the KV-cache methods
below), and is compared with those instead of the shared residual ones. Phase 5's head-to-head table reads a
method's `detection` (the score that reads its direction as a detector) and `made_by` (what making it cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.controls import Control, random_kv_controls, random_routing_controls
from common.directions import load_directions
from common.interventions import Intervention, ResidualAddition, load_interventions
from common.kv_vectors import load_vector
from common.positions import LAST_PROMPT
from common.steering_dictionary import DICTIONARY_FILE

CLASSES = ("correct", "incorrect")


@dataclass(frozen=True)
class SteeringSite:
    """Where the methods steer and where they find their inputs."""
    layer: int
    position: str  # where the directions were found (common/positions.py)
    folders: dict[str, Path]  # upstream phase id -> output folder

    @property
    def policy(self) -> str:
        """A direction read at the last prompt token is added there only; one read over the code, everywhere."""
        return "last_prompt" if self.position == LAST_PROMPT else "all"

    def folder(self, phase_id: str) -> Path:
        return self.folders[phase_id]


@dataclass(frozen=True)
class Proposal:
    interventions: dict[str, Intervention]  # class -> unit-strength intervention (alpha set by calibration)
    warnings: list[str] = field(default_factory=list)
    exclude_latents: list[int] = field(default_factory=list)  # SAE latents the active-latent controls must not use


OwnControls = Callable[[Proposal, int, int], list[Control]]  # (proposal, how many, seed) -> unit controls


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # for tables and figures
    colour: str
    upstream: tuple[str, ...]
    propose: Callable[[SteeringSite], Proposal]
    controls: OwnControls | None = None  # None: the shared residual controls of the steering site
    detection: tuple[str, str] | None = None  # (phase, score) that reads its direction as a detector, for phase 5:
    #                                           ("3.8", score family) or ("3.9", calibrated predictor); None: none
    made_by: tuple[str, ...] = ()  # the phases whose wall time is what making it cost (phase 5); () = upstream

    @property
    def training_phases(self) -> tuple[str, ...]:
        return self.made_by or self.upstream


METHODS: dict[str, Method] = {}


def method(name: str, title: str, colour: str, upstream: tuple[str, ...], controls: OwnControls | None = None,
           detection: tuple[str, str] | None = None, made_by: tuple[str, ...] = ()):
    """Decorator: registers `propose` as a method."""
    def register(propose: Callable[[SteeringSite], Proposal]) -> Callable[[SteeringSite], Proposal]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, title, colour, upstream, propose, controls, detection, made_by)
        return propose
    return register


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (registered: {', '.join(sorted(METHODS))})") from None


@method("sae_latent", "SAE latent", "#2a9d8f", upstream=("2.5",), detection=("3.8", "sae_correct_latent"),
        made_by=("2.0", "2.5"))
def sae_latent(where: SteeringSite) -> Proposal:
    """Phase 2.5's best-ranked listed latent of each class at the steering layer: its decoder row."""
    listed = [d for d in load_directions(where.folder("2.5") / "latent_directions.safetensors")
              if d.source == "sae_latent" and d.position == where.position and d.layer == where.layer]
    proposed, warnings, chosen = {}, [], []
    for kind in CLASSES:
        ranked = sorted((d for d in listed if d.provenance.get("prefers") == kind), key=lambda d: d.provenance["rank"])
        if ranked:
            proposed[kind] = ResidualAddition(ranked[0], 1.0, where.policy)
            chosen.append(int(ranked[0].provenance["feature_idx"]))
        else:
            warnings.append(f"phase 2.5 lists no {kind}-preferring latent at layer {where.layer} ({where.position})")
    return Proposal(proposed, warnings, chosen)


def from_directions(phase_id: str, source: str, title: str) -> Callable[[SteeringSite], Proposal]:
    """A method steering with a phase's `directions.safetensors` entry of `source` at the steering layer and
    position (it points towards passing): as it is for the correct class, negated for the incorrect one."""
    def propose(where: SteeringSite) -> Proposal:
        found = [d for d in load_directions(where.folder(phase_id) / "directions.safetensors")
                 if d.source == source and d.position == where.position and d.layer == where.layer]
        if not found:
            return Proposal({}, [f"phase {phase_id} has no {title} direction at layer {where.layer} "
                                 f"({where.position})"])
        addition = ResidualAddition(found[0], 1.0, where.policy)
        return Proposal({"correct": addition, "incorrect": addition.negated()})
    propose.__doc__ = f"Phase {phase_id}'s {title} direction at the steering layer; negated for the incorrect class."
    return propose


method("mean_difference", "mean difference", "#457b9d", upstream=("2.6",), detection=("3.8", "mean_difference"))(
    from_directions("2.6", "mean_difference", "passing-minus-failing mean"))


def _register_contrastive() -> None:
    """Phase 2.7's directions: one method per kind of pair and aggregator, e.g. `contrastive_mutant_mean_difference`."""
    colours = {"mutant": ("#e76f51", "#f4a261", "#e9c46a"), "own": ("#8338ec", "#b5179e", "#7209b7")}
    for kind, palette in colours.items():
        for aggregator, colour in zip(("mean_difference", "pca", "probe"), palette):
            words = aggregator.replace("_", " ")
            name = f"contrastive_{kind}_{aggregator}"
            method(name, f"contrastive ({kind} pairs) {words}", colour, upstream=("2.7",), detection=("3.8", name))(
                from_directions("2.7", name, f"{words} of its {kind} contrastive pairs"))


_register_contrastive()


def _kv_cache_controls(proposal: Proposal, n: int, seed: int) -> list[Control]:
    return random_kv_controls(proposal.interventions["correct"], n, seed) if proposal.interventions else []


def _register_kv_cache() -> None:
    """Phase 2.8's KV-cache vectors (seed 002), one method per kind of pair: `kv_cache_mutant`, `kv_cache_own`. They
    edit their own layers' caches, whatever the steering site, and are compared with random edits of their norms."""
    for kind, colour in (("mutant", "#2b9348"), ("own", "#80b918")):
        def propose(where: SteeringSite, kind: str = kind) -> Proposal:
            edit = load_vector(where.folder("2.8"), f"kv_{kind}")
            if edit is None:
                return Proposal({}, [f"phase 2.8 wrote no kv_{kind} vector (too few {kind} pairs)"])
            unit = edit.unit()
            return Proposal({"correct": unit, "incorrect": unit.negated()})
        propose.__doc__ = (f"Phase 2.8's KV-cache vector of the {kind} pairs at unit norm; negated for the incorrect "
                           "class.")
        method(f"kv_cache_{kind}", f"KV cache ({kind} pairs)", colour, upstream=("2.8",),
               controls=_kv_cache_controls, made_by=("2.7", "2.8"))(propose)


_register_kv_cache()


def _self_steering_controls(proposal: Proposal, n: int, seed: int) -> list[Control]:
    return random_routing_controls(proposal.interventions["correct"], n, seed) if proposal.interventions else []


@method("self_steering", "self-steering (dictionary)", "#6a4c93", upstream=("3.9",), controls=_self_steering_controls,
        detection=("3.9", "dictionary_confidence"))
def self_steering(where: SteeringSite) -> Proposal:
    """Phase 3.9's dictionary at alpha 1: each row pushed along its own routed adjustment s(h), towards passing;
    along -s(h) for the incorrect class. It steers at the dictionary's layer (phase 3.9 places it as 4.5 does)."""
    path = where.folder("3.9") / DICTIONARY_FILE
    if not path.is_file():
        return Proposal({}, ["phase 3.9 wrote no dictionary (its summary says why)"])
    steering = load_interventions(path)[0]
    return Proposal({"correct": steering, "incorrect": steering.negated()})


def steering_layer(folder_2_5: Path, position: str, configured: int | None) -> int | None:
    """The configured layer, else the layer of phase 2.5's rank-1 correct-preferring latent at `position`."""
    if configured is not None:
        return configured
    best = [d for d in load_directions(folder_2_5 / "latent_directions.safetensors")
            if d.source == "sae_latent" and d.position == position and d.provenance.get("prefers") == "correct"
            and d.provenance.get("rank") == 1]
    return best[0].layer if best else None
