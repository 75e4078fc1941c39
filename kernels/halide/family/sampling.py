"""The search's random moves over the family's space: a uniformly drawn valid schedule, and a valid
neighbour of one."""

from __future__ import annotations

import dataclasses
import random

from kernels.device import DeviceSpec
from kernels.halide.family.heuristic import fit
from kernels.halide.family.params import Params, params_class
from kernels.halide.family.space import canonical, check, space
from kernels.layer import LayerShape


def sample(shape: LayerShape, device: DeviceSpec, rng: random.Random, tries: int = 2000) -> Params:
    """A uniformly drawn valid parameter set (rejection sampling over `space`)."""
    values = space(shape, device)
    cls = params_class(device)
    for _ in range(tries):
        params = canonical(cls(**{name: rng.choice(valid) for name, valid in values.items()}), shape)
        if check(params, shape, device) is None:
            return params
    return fit(cls(**{name: rng.choice(valid) for name, valid in values.items()}), shape, device)


def mutate(
    params: Params, shape: LayerShape, device: DeviceSpec, rng: random.Random, steps: int = 1
) -> Params:
    """A valid neighbour of `params`: `steps` parameters moved to an adjacent (or, for choices, another)
    valid value."""
    values = space(shape, device)
    names = list(values)
    for _ in range(200):
        q = params
        for _ in range(steps):
            name = rng.choice(names)
            valid = list(values[name])
            current = getattr(q, name)
            if len(valid) < 2:
                continue
            if isinstance(current, int) and not isinstance(current, bool) and name not in ("max_registers",):
                ordered = sorted(valid)
                i = ordered.index(current) if current in ordered else 0
                j = min(len(ordered) - 1, max(0, i + rng.choice((-1, 1))))
                new = ordered[j] if j != i else rng.choice([v for v in ordered if v != current])
            else:
                new = rng.choice([v for v in valid if v != current])
            q = dataclasses.replace(q, **{name: new})
        q = canonical(q, shape)
        if q != params and check(q, shape, device) is None:
            return q
    return sample(shape, device, rng)
