"""The base of every config section."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # frozen: a config is built once and passed down, never changed on the way; forbid: a
    # typo in a YAML key fails with its dotted path instead of being ignored
    model_config = ConfigDict(extra="forbid", frozen=True)
