"""Errors the user can fix. The CLI prints them as one line and exits with status 2."""


class PipelineError(Exception):
    """A problem with the user's input, described in one line."""


class ConfigError(PipelineError):
    """A config file or setting is invalid."""


class DataError(PipelineError):
    """The custom text cannot be read or is empty."""


class PresetError(PipelineError):
    """A preset cannot be found, reached or loaded."""
