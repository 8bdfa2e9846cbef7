"""Integers survive the trip through protobuf's Struct (which holds every number as a double)."""

from __future__ import annotations

from google.protobuf import struct_pb2

from resilienttask.json_values import struct_to_dict, value_to_python, with_integers


def test_whole_numbers_read_back_as_ints_and_fractions_stay_floats() -> None:
    payload = struct_pb2.Struct()
    payload.update({"words": 11, "ratio": 0.5, "nested": {"list": [1, 2.25, -3]}, "big": 2.0**60, "flag": True})
    plain = struct_to_dict(payload)
    assert plain == {"words": 11, "ratio": 0.5, "nested": {"list": [1, 2.25, -3]}, "big": 2.0**60, "flag": True}
    assert type(plain["words"]) is int and type(plain["nested"]["list"][0]) is int
    assert type(plain["big"]) is float, "beyond 2**53 a double is not known to be an integer"
    assert type(plain["flag"]) is bool


def test_a_value_of_any_shape() -> None:
    assert value_to_python(struct_pb2.Value(number_value=42)) == 42
    assert type(value_to_python(struct_pb2.Value(number_value=42))) is int
    assert value_to_python(struct_pb2.Value(string_value="x")) == "x"
    assert with_integers([1.0, "1.0", None]) == [1, "1.0", None]
