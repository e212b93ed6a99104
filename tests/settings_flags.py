"""A check shared by the tests of the verbs whose flags are built from a settings dataclass."""

from dataclasses import MISSING


def assert_flags_are_fields(parser, fields) -> None:
    """`parser` has one flag per settings field (besides --help and --json), with the field's
    flag name, requiredness, default, choices and help, and an on/off flag for a bool field."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "json")}
    by_name = {f.name: f for f in fields}
    assert set(by_name) == set(actions)
    for name, action in actions.items():
        f = by_name[name]
        assert action.option_strings == ["--" + name.replace("_", "-")], name
        assert action.required == (f.default is MISSING), name
        if not action.required:
            assert action.default == f.default, name
        assert list(action.choices or []) == list(f.metadata["choices"] or []), name
        assert (f.type == "bool") == (action.nargs == 0), name
        assert action.help and action.help.startswith(f.metadata["help"].replace("%", "%%")), name
