"""The README documents every setting the code reads."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    for name, field in Settings.model_fields.items():
        env = (
            field.validation_alias.choices[0]  # type: ignore[union-attr]  # every aliased setting uses AliasChoices
            if field.validation_alias
            else f"VOICEPOOL_{name.upper()}"
        )
        assert f"`{env}`" in README, f"{env} is missing from the README's configuration table"
