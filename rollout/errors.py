"""The error for bad user input (a recipe, an override, a data file): the CLI prints its message
as one ``syncrl: ...`` line. Here, at the bottom of the import graph, so that data readers
(rollout) and the config (launch) raise the same class."""


class ConfigError(ValueError):
    """A recipe, override or input file that does not validate; the message names each field,
    file and line."""
