"""User-facing errors: the CLI prints these as one clear line, without a traceback."""


class CionError(Exception):
    """An error caused by input the user controls (a job file, a URI, a data file)."""


class ConfigError(CionError):
    """A job file or override that does not validate; the message names the file and key path."""


class DataError(CionError):
    """Bad or missing data; the message names the file, row or key."""
