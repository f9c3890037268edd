"""Farm keys: derivation, join codes and the key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from flamenco_p2p.errors import ConfigError, InvalidInput
from flamenco_p2p.farmkey import (
    FarmKey,
    check_token,
    hkdf,
    key_path,
    load_farm_key,
    new_farm_key,
    parse_invite,
    save_farm_key,
)


def test_hkdf_matches_rfc5869_case_1() -> None:
    okm = hkdf(
        bytes([0x0B] * 22), bytes(range(0xF0, 0xFA)), 42, salt=bytes(range(0x0D))
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    )


def test_hkdf_matches_rfc5869_case_3() -> None:
    okm = hkdf(bytes([0x0B] * 22), b"", 42, salt=b"")
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8"
    )


def test_farm_key_derived_values_differ() -> None:
    key = new_farm_key("studio")
    values = {
        key.farm_id,
        key.server_curve.public.decode(),
        key.client_curve.public.decode(),
        key.api_token,
        key.key.hex(),
    }
    assert len(values) == 5
    assert key.key.hex() not in key.farm_id
    assert len(key.server_curve.public) == 40


def test_farm_key_repr_hides_secret() -> None:
    key = new_farm_key("studio")
    assert key.key.hex() not in repr(key)
    assert key.client_curve.secret.decode() not in repr(key.client_curve)


def test_invite_round_trip() -> None:
    key = new_farm_key("Épisode 01 farm")
    code = key.invite_code()
    assert code.startswith("fp1-")
    assert parse_invite(code) == key
    assert parse_invite("  " + code.upper() + "\n") == key


def test_invite_typo_detected() -> None:
    code = new_farm_key("studio").invite_code()
    position = 10
    changed = "a" if code[position] != "a" else "b"
    with pytest.raises(InvalidInput, match=r"typo|damaged"):
        parse_invite(code[:position] + changed + code[position + 1 :])


@pytest.mark.parametrize("code", ["", "hello", "fp1-", "fp2-abcde", "fp1-!!!!"])
def test_invite_garbage_rejected(code: str) -> None:
    with pytest.raises(InvalidInput):
        parse_invite(code)


def test_key_file_mode_0600(tmp_path: Path) -> None:
    key = new_farm_key("studio")
    path = save_farm_key(tmp_path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_farm_key(tmp_path) == key


def test_key_file_not_replaced_without_force(tmp_path: Path) -> None:
    save_farm_key(tmp_path, new_farm_key("one"))
    other = new_farm_key("two")
    with pytest.raises(ConfigError, match="--force"):
        save_farm_key(tmp_path, other)
    save_farm_key(tmp_path, other, replace=True)
    assert load_farm_key(tmp_path) == other


def test_key_file_readable_by_others_rejected(tmp_path: Path) -> None:
    save_farm_key(tmp_path, new_farm_key("one"))
    key_path(tmp_path).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_farm_key(tmp_path)


def test_key_file_missing_says_how(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="flamenco-p2p init"):
        load_farm_key(tmp_path)


def test_check_token_constant_time_compare() -> None:
    key = FarmKey("studio", bytes(32))
    assert check_token(key.api_token, key.api_token)
    assert not check_token(key.api_token[:-1] + "x", key.api_token)
    assert not check_token("", key.api_token)


def test_invite_every_single_letter_typo_detected() -> None:
    code = new_farm_key("studio").invite_code()
    letters = "abcdefghijklmnopqrstuvwxyz234567"
    for position in range(len("fp1-"), len(code)):
        if code[position] == "-":
            continue
        for letter in letters:
            if letter == code[position]:
                continue
            typo = code[:position] + letter + code[position + 1 :]
            with pytest.raises(InvalidInput):
                parse_invite(typo)
