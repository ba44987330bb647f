"""Articulated stick figures and the actions they perform (the procedural action-video model).

A figure is a 10-segment stick model (torso, head, two-segment arms and legs) posed by joint angles.
An action is a function ``pose(t) -> Pose`` of time in seconds; the classes are built so that they
differ by *motion* (direction, speed, periodicity) while single frames overlap:

- ``walk_left`` / ``walk_right``: the same scissor gait drawn in the image plane (a front-facing
  figure, so a single frame does not show the heading); the camera pans along with the walker at a
  random fraction k in [0.5, 1.5] of its speed, so the figure's *image* drift has a random sign and
  only the motion relative to the background gives the direction.
- ``arm_circle_cw`` / ``arm_circle_ccw``: windmill arms (1.0-1.6 Hz) turning one way or the other:
  the same set of poses, so a single frame cannot tell them apart; the order of the poses can.
- ``wave``, ``clap``, ``jump``, ``squat``: periodic actions that also differ in pose.

Angles are measured from "straight down", counter-clockwise positive, in a y-up figure frame whose
unit is the figure height; ``direction(a) = (sin a, -cos a)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

#: action classes in label order; ``MIRROR`` maps each to its horizontal mirror image
ACTIONS: tuple[str, ...] = ("walk_left", "walk_right", "arm_circle_cw", "arm_circle_ccw",
                            "wave", "clap", "jump", "squat")
MIRROR: dict[str, str] = {"walk_left": "walk_right", "walk_right": "walk_left",
                          "arm_circle_cw": "arm_circle_ccw", "arm_circle_ccw": "arm_circle_cw",
                          "wave": "wave", "clap": "clap", "jump": "jump", "squat": "squat"}

# segment lengths in figure heights (legs 0.5, torso 0.3, neck+head 0.2)
THIGH, SHIN, TORSO, UPPER_ARM, FOREARM, NECK, HEAD_R = 0.25, 0.25, 0.30, 0.17, 0.16, 0.10, 0.08
REST_ARM = math.radians(15)


@dataclass
class Pose:
    """Joint angles (radians) and root (hip) offset in figure heights."""

    root: tuple[float, float] = (0.0, 0.0)
    arm_l: tuple[float, float] = (-REST_ARM, -REST_ARM)   # (upper arm, forearm)
    arm_r: tuple[float, float] = (REST_ARM, REST_ARM)
    leg_l: tuple[float, float] = (-0.08, -0.08)           # (thigh, shin)
    leg_r: tuple[float, float] = (0.08, 0.08)
    tilt: float = 0.0                                     # torso lean


def _dir(a: float) -> np.ndarray:
    return np.array([math.sin(a), -math.cos(a)])


def skeleton(pose: Pose) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Segments ``[(p, q), ...]`` and the head centre, in figure units (y up, hip at ``pose.root``)."""
    hip = np.array(pose.root, dtype=float)
    neck = hip + TORSO * _dir(math.pi + pose.tilt)
    head = neck + (NECK + HEAD_R) * _dir(math.pi + pose.tilt)
    segs = [(hip, neck)]
    for (a1, a2) in (pose.arm_l, pose.arm_r):
        elbow = neck + UPPER_ARM * _dir(a1)
        segs += [(neck, elbow), (elbow, elbow + FOREARM * _dir(a2))]
    for (a1, a2) in (pose.leg_l, pose.leg_r):
        knee = hip + THIGH * _dir(a1)
        segs += [(hip, knee), (knee, knee + SHIN * _dir(a2))]
    return segs, head


@dataclass
class ActionSample:
    """One drawn instance of an action: its pose trajectory and camera motion."""

    pose: Callable[[float], Pose]
    figure_velocity: float   # figure heights per second along x (walking), else 0
    camera_velocity: float   # figure heights per second the camera pans along x


def sample_action(name: str, rng: np.random.Generator) -> ActionSample:
    """Draw frequency, phase, amplitude and camera motion of ``name`` from ``rng``."""
    phase = rng.uniform(0, 2 * math.pi)
    amp = rng.uniform(0.85, 1.15)
    pan = rng.uniform(-0.15, 0.15)  # slow random pan for the non-walking classes

    if name in ("walk_left", "walk_right"):
        sign = -1.0 if name == "walk_left" else 1.0
        f = rng.uniform(0.9, 1.3)            # gait cycles per second
        v = rng.uniform(0.5, 0.9) * sign     # figure heights per second
        k = rng.uniform(0.5, 1.5)            # camera tracking factor

        def pose(t: float) -> Pose:
            s = math.sin(2 * math.pi * f * t + phase)
            a = math.radians(25) * amp * s
            return Pose(root=(0.0, 0.02 * abs(s)), leg_l=(a, a), leg_r=(-a, -a),
                        arm_l=(-REST_ARM - 0.6 * a, -REST_ARM - 0.6 * a),
                        arm_r=(REST_ARM + 0.6 * a, REST_ARM + 0.6 * a))
        return ActionSample(pose, v, k * v)

    if name in ("arm_circle_cw", "arm_circle_ccw"):
        sign = -1.0 if name == "arm_circle_cw" else 1.0  # ccw = increasing angle (y up)
        f = rng.uniform(1.0, 1.6)

        def pose(t: float) -> Pose:
            a = phase + sign * 2 * math.pi * f * t
            return Pose(arm_l=(a + math.pi, a + math.pi), arm_r=(a, a))
        return ActionSample(pose, 0.0, pan)

    if name == "wave":
        f = rng.uniform(2.0, 3.0)
        side = rng.choice([-1.0, 1.0])

        def pose(t: float) -> Pose:
            fore = side * (math.radians(160) + math.radians(35) * amp * math.sin(2 * math.pi * f * t + phase))
            raised = (side * math.radians(130), fore)
            rest = (-side * REST_ARM, -side * REST_ARM)
            return Pose(arm_l=raised if side < 0 else rest, arm_r=raised if side > 0 else rest)
        return ActionSample(pose, 0.0, pan)

    if name == "clap":
        f = rng.uniform(1.2, 2.0)

        def pose(t: float) -> Pose:
            s = 0.5 + 0.5 * math.sin(2 * math.pi * f * t + phase)
            upper = math.radians(55)
            fore = math.radians(-60 + 125 * s * amp)   # left forearm swings in towards the midline
            return Pose(arm_l=(-upper, fore), arm_r=(upper, -fore))
        return ActionSample(pose, 0.0, pan)

    if name == "jump":
        f = rng.uniform(1.5, 2.3)   # hops per second
        height = rng.uniform(0.10, 0.18) * amp

        def pose(t: float) -> Pose:
            s = abs(math.sin(math.pi * f * t + phase))
            arm = math.radians(150)
            legs = math.radians(6 + 10 * (1 - s))
            return Pose(root=(0.0, height * s), arm_l=(-arm, -arm), arm_r=(arm, arm),
                        leg_l=(-legs, -legs), leg_r=(legs, legs))
        return ActionSample(pose, 0.0, pan)

    if name == "squat":
        f = rng.uniform(0.8, 1.3)
        depth = rng.uniform(0.14, 0.24) * amp

        def pose(t: float) -> Pose:
            d = depth * (0.5 - 0.5 * math.cos(2 * math.pi * f * t + phase))
            theta = math.acos(max(-1.0, min(1.0, (THIGH + SHIN - d) / (THIGH + SHIN))))
            arm = math.radians(20 + 60 * d / max(depth, 1e-6))
            return Pose(root=(0.0, -d), leg_l=(-theta, theta), leg_r=(theta, -theta),
                        arm_l=(-arm, -arm), arm_r=(arm, arm), tilt=0.0)
        return ActionSample(pose, 0.0, pan)

    raise ValueError(f"unknown action {name!r}; expected one of {list(ACTIONS)}")
