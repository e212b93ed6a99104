"""A screen mixin states what it uses of the screen it is mixed into as a Protocol (its `Needs`):
every screen built from mixins has each member of each of its mixins' Needs."""

from __future__ import annotations

import typing

import pytest

from screens.adapters.screen import AdaptersScreen
from screens.chat.screen import ChatScreen
from screens.convert.screen import ConvertScreen
from screens.data.screen import DataScreen
from screens.eval.screen import EvalScreen
from screens.server.screen import ServerScreen
from screens.train.screen import TrainScreen

SCREENS = [AdaptersScreen, ChatScreen, ConvertScreen, DataScreen, EvalScreen, ServerScreen, TrainScreen]


def protocol_members(proto: type) -> set[str]:
    """The attributes and methods a Protocol declares, its base protocols' included."""
    names: set[str] = set()
    for base in proto.__mro__:
        if base in (typing.Protocol, typing.Generic, object):
            continue
        names |= set(base.__dict__.get("__annotations__", {}))
        names |= {n for n, v in vars(base).items() if callable(v) or isinstance(v, property)}
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))} - {"_is_protocol", "_is_runtime_protocol"}


def mixins_with_needs(screen_class: type) -> list[type]:
    return [c for c in screen_class.__mro__ if "Needs" in vars(c)]


@pytest.mark.parametrize("screen_class", SCREENS, ids=lambda c: c.__name__)
def test_each_mixin_gets_what_it_needs(screen_class):
    mixins = mixins_with_needs(screen_class)
    assert mixins, f"{screen_class.__name__}: no mixin states its needs"
    screen = screen_class()  # instance attributes are set in __init__
    for mixin in mixins:
        members = protocol_members(mixin.Needs)
        assert members, f"{mixin.__name__}.Needs declares nothing"
        missing = sorted(n for n in members if not hasattr(screen, n) and n not in vars(mixin))
        assert not missing, f"{screen_class.__name__} lacks what {mixin.__name__} needs: {missing}"


def test_needs_are_not_provided_by_the_mixin_itself():
    """A Needs member the mixin defines would say nothing about the screen (and, before
    RunsScreen in the MRO, a stub there would hide the screen's method)."""
    for screen_class in SCREENS:
        for mixin in mixins_with_needs(screen_class):
            own = set(vars(mixin))
            assert not protocol_members(mixin.Needs) & own, (mixin.__name__, protocol_members(mixin.Needs) & own)
